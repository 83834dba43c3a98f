"""Device identity: what a latency table records about its device, how two identities differ in words, and which
table a search picks by it (never one of another device because its file sits at the expected path)."""

from __future__ import annotations

import json

from autoprune.cost.device_identity import (
    compare,
    device_id,
    device_name,
    differences_text,
    identify,
    isa_level,
    read_cpuinfo,
)
from autoprune.cost.table_choice import find_table

AVX2_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse sse2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
AVX512_CPUINFO = AVX2_CPUINFO.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512dq avx512bw avx512vl avx512_vnni")


def _ident(tmp_path, text: str, name: str = "cpuinfo", threads: int = 2) -> dict:
    path = tmp_path / name
    path.write_text(text)
    return identify("onnxruntime", threads, cpuinfo=path)


def test_identity_names_what_decides_kernel_speed(tmp_path):
    ident = _ident(tmp_path, AVX512_CPUINFO)
    assert (ident["vendor"], ident["family"], ident["cpu_model"], ident["stepping"]) == ("AuthenticAMD", "25", "1", "1")
    assert ident["cpu"] == "AMD EPYC" and ident["cores"] >= 1 and ident["threads"] == 2
    assert {"AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL", "AVX-512 VNNI"} <= set(ident["isa"])
    assert "bmi2" not in ident["isa"] and isa_level(ident["isa"]) == "AVX-512"
    assert ident["backend"] == "onnxruntime" and ident["backend_release"].count(".") == 1
    assert ident["providers"] == ["CPUExecutionProvider"] and "notes" not in ident
    assert device_name(ident).startswith("AMD EPYC (AVX-512, ")


def test_another_isa_is_another_device_in_plain_words(tmp_path):
    here, table = _ident(tmp_path, AVX2_CPUINFO, "a"), _ident(tmp_path, AVX512_CPUINFO, "b")
    diffs = compare(table, here)
    assert [d.field for d in diffs] == ["isa"] and not diffs[0].note
    assert diffs[0].text == "this CPU has AVX2; the table's had AVX-512"
    assert device_id(here) != device_id(table)  # two CPUs never share a directory
    assert "-avx2-" in device_id(here) and "-avx512-" in device_id(table)
    assert device_id(here) == device_id(dict(here, date="another day", python="3.99"))  # settings, not the device
    same_level = dict(table, isa=[i for i in table["isa"] if i != "AVX-512 VNNI"])
    assert compare(table, same_level)[0].text == "this CPU lacks AVX-512 VNNI, which the table's had"


def test_a_patch_release_is_a_note_and_a_minor_release_a_difference(tmp_path):
    here = _ident(tmp_path, AVX2_CPUINFO)
    major, minor = here["backend_release"].split(".")
    patch = dict(here, backend_version=f"{major}.{minor}.99")
    diffs = compare(patch, here)
    assert len(diffs) == 1 and diffs[0].note and "patch release" in diffs[0].text
    older = dict(here, backend_version=f"{major}.{int(minor) - 1}.0", backend_release=f"{major}.{int(minor) - 1}")
    # the release is read from the version itself, whatever a hand-edited sidecar says it is
    assert compare(dict(older, backend_release=here["backend_release"]), here) == compare(older, here)
    diffs = compare(older, here)
    assert len(diffs) == 1 and not diffs[0].note
    assert diffs[0].text == f"onnxruntime {major}.{minor} here; the table was measured with {major}.{int(minor) - 1}"
    assert device_id(older) != device_id(here)


def test_missing_cpuinfo_fields_are_notes_not_errors(tmp_path):
    info = read_cpuinfo(tmp_path / "does-not-exist")
    assert info["isa"] is None and "isa" in info["missing"] and "vendor" in info["missing"]
    ident = _ident(tmp_path, "processor\t: 0\nmodel name\t: Mystery CPU\n")
    assert ident["isa"] is None and ident["vendor"] is None and ident["cpu"] == "Mystery CPU"
    assert len(ident["notes"]) == 1 and "\n" not in ident["notes"][0] and "unknown" in ident["notes"][0]
    assert "isa-unknown" in device_id(ident) and "ISA not recorded" in device_name(ident)
    table = _ident(tmp_path, AVX2_CPUINFO, "b")
    text = differences_text(compare(table, ident))
    assert "instruction set of this CPU is not known" in text and "\n" not in text
    assert compare(ident, ident) == []  # a table built here with the same gaps is this machine's


def test_a_table_recorded_before_identities_is_never_taken_for_this_device(tmp_path):
    here = _ident(tmp_path, AVX2_CPUINFO)
    legacy = {
        k: here[k]
        for k in (
            "cpu",
            "cores",
            "os",
            "machine",
            "backend",
            "backend_version",
            "providers",
            "device",
            "gpu",
            "threads",
        )
    }
    diffs = compare(legacy, here)
    assert [d.field for d in diffs] == ["isa"] and "does not record its CPU's instruction set" in diffs[0].text


def _sidecar(root, ident: dict, name: str = "resnet20-1x3x16x16") -> object:
    d = root / device_id(ident)
    d.mkdir(parents=True)
    (d / f"{name}.csv").write_text("not read by find_table\n")
    meta = {"backend": ident["backend"], "threads": ident["threads"], "device": "cpu", "fingerprint": ident}
    (d / f"{name}.json").write_text(json.dumps(meta))
    return d / f"{name}.csv"


def test_find_table_picks_by_identity_not_by_path(tmp_path):
    here = identify("onnxruntime", 2)
    foreign_isa = ["AVX-512F"] if "AVX-512F" not in (here["isa"] or []) else ["AVX2"]
    root = tmp_path / "tables"
    foreign = _sidecar(root, dict(here, isa=foreign_isa))
    found, passed_over = find_table("resnet20", (1, 3, 16, 16), [root], threads=2)
    assert found is None and [p for p, _ in passed_over] == [foreign]
    assert passed_over[0][1][0].field == "isa"
    other_threads = _sidecar(tmp_path / "t1", dict(here, threads=1))  # measured with another setting: not a match
    assert find_table("resnet20", (1, 3, 16, 16), [other_threads.parents[1]], threads=2) == (None, [])
    mine = _sidecar(tmp_path / "cache", here)
    found, passed_over = find_table("resnet20", (1, 3, 16, 16), [root, tmp_path / "cache"], threads=2)
    assert found == mine and len(passed_over) == 1


def test_the_shipped_tables_of_an_unrecorded_isa_are_passed_over():
    """The tables shipped from the AVX-512 machine record no ISA: whatever this machine is, none is chosen."""
    from autoprune.cost.table_choice import SHIPPED_TABLES

    legacy = SHIPPED_TABLES / "amd-epyc-2c-onnxruntime-2t" / "resnet18-1x3x224x224.csv"
    assert legacy.is_file()
    found, passed_over = find_table("resnet18", (1, 3, 224, 224), [SHIPPED_TABLES], threads=2)
    assert found != legacy and legacy in [p for p, _ in passed_over]
