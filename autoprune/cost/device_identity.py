"""Which device a latency table belongs to: the facts that decide kernel speed, and plain words for a difference.

A table predicts latency for the device it was measured on and for no other. Two CPUs sold under one name ("AMD
EPYC", 2 cores) can differ in the instruction set onnxruntime's kernels dispatch on, and with it in speed and in
the kernels' channel blocks (8 with AVX2, 16 with AVX-512). So the identity names the
CPU (vendor, family/model/stepping, model name), the ISA features the kernels dispatch on, the cores, and the
backend (major.minor version, execution provider); for CUDA the GPU, its compute capability, the driver and the
CUDA/cuDNN versions. A patch release of the backend is a note, not another device.

This module imports only the standard library at the top (the backend is imported where its version is read), so
``measure_probes.py`` can carry a copy of it to a device where autoprune is not installed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

IDENTITY_FORMAT = 2
CPUINFO = Path("/proc/cpuinfo")

# /proc/cpuinfo flag -> the name a reader knows; the features onnxruntime's MLAS kernels dispatch on (x86: FMA/AVX2,
# AVX-512F/BW/VL/DQ, VNNI in both encodings, BF16/FP16, AMX; Arm: NEON dot product, I8MM, BF16, SVE)
ISA_FLAGS = {
    "avx": "AVX",
    "fma": "FMA",
    "avx2": "AVX2",
    "avx512f": "AVX-512F",
    "avx512dq": "AVX-512DQ",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "asimd": "NEON",
    "asimddp": "NEON dot product",
    "i8mm": "I8MM",
    "bf16": "BF16",
    "sve": "SVE",
    "sve2": "SVE2",
}
# the widest vector family present, for device names and one-line differences (widest first)
ISA_LEVELS = (
    ("AMX", "amx"),
    ("AVX-512F", "avx512"),
    ("AVX2", "avx2"),
    ("AVX", "avx"),
    ("SVE2", "sve2"),
    ("SVE", "sve"),
    ("NEON", "neon"),
)
# the fields that make two identities the same device (the rest — threads, python, date — are settings or record)
DEVICE_FIELDS = (
    "vendor",
    "family",
    "cpu_model",
    "stepping",
    "cpu",
    "isa",
    "cores",
    "os",
    "machine",
    "backend",
    "backend_release",
    "providers",
    "device",
    "gpu",
    "gpu_capability",
    "gpu_driver",
    "cuda",
    "cudnn",
)
LABELS = {
    "vendor": "CPU vendor",
    "family": "CPU family",
    "cpu_model": "CPU model number",
    "stepping": "CPU stepping",
    "cpu": "CPU",
    "cores": "cores",
    "os": "operating system",
    "machine": "architecture",
    "backend": "backend",
    "providers": "execution providers",
    "device": "device",
    "gpu": "GPU",
    "gpu_capability": "GPU compute capability",
    "gpu_driver": "GPU driver",
    "cuda": "CUDA",
    "cudnn": "cuDNN",
}


def read_cpuinfo(path: Path | str = CPUINFO) -> dict:
    """The first processor's identifying fields from ``/proc/cpuinfo`` (x86 and Arm spellings); a field the file
    lacks is None and is named in ``missing`` — a note for the reader, never an error."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: the machine's cores are one model
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags", fields.get("features"))
    info = {
        "vendor": fields.get("vendor_id") or fields.get("cpu implementer"),
        "family": fields.get("cpu family") or fields.get("cpu architecture"),
        "cpu_model": fields.get("model") or fields.get("cpu part"),
        "stepping": fields.get("stepping") or fields.get("cpu variant"),
        "cpu": fields.get("model name") or platform.processor() or None,
        "isa": sorted({ISA_FLAGS[f] for f in flags.split() if f in ISA_FLAGS}) if flags is not None else None,
    }
    info["missing"] = [k for k, v in info.items() if v is None]
    return info


def _release(version: str | None) -> str | None:
    """``1.32.0`` -> ``1.32``: a patch release keeps the kernels; major.minor decides."""
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def _backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    import torch

    return torch.__version__.split("+")[0]


def _cuda_facts() -> dict:
    """GPU name, compute capability, driver, CUDA and cuDNN versions (empty strings where unknown)."""
    facts = {"gpu": "unavailable", "gpu_capability": "", "gpu_driver": "", "cuda": "", "cudnn": ""}
    try:
        import torch
    except ImportError:
        return facts
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        facts.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_capability=f"{major}.{minor}",
            cuda=str(torch.version.cuda or ""),
            cudnn=str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
        )
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        m = re.search(r"Kernel Module\s+(\S+)", first)
        facts["gpu_driver"] = m.group(1) if m else first.strip()
    except (OSError, IndexError):
        pass
    return facts


def identify(
    backend: str = "onnxruntime", threads: int = 2, device: str = "cpu", *, cpuinfo: Path | str = CPUINFO
) -> dict:
    """This machine's identity for tables measured with ``backend`` at ``threads`` intra-op threads on ``device``."""
    cpu = read_cpuinfo(cpuinfo)
    version = _backend_version(backend)
    if backend == "onnxruntime":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    else:
        providers = [f"torch-{device}"]
    ident = {
        "identity_format": IDENTITY_FORMAT,
        **{k: cpu[k] for k in ("vendor", "family", "cpu_model", "stepping", "cpu", "isa")},
        "cores": os.cpu_count() or 1,
        "os": platform.system(),
        "machine": platform.machine(),
        "backend": backend,
        "backend_version": version,
        "backend_release": _release(version),
        "providers": providers,
        "device": device,
        **(
            {"gpu": "", "gpu_capability": "", "gpu_driver": "", "cuda": "", "cudnn": ""}
            if device != "cuda"
            else _cuda_facts()
        ),
        "threads": threads,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cpu["missing"]:
        ident["notes"] = [
            f"/proc/cpuinfo gave no {', '.join(LABELS.get(k, k) for k in cpu['missing'])} on this "
            "machine: recorded as unknown"
        ]
    return ident


def isa_level(isa: list[str] | None, *, slug: bool = False) -> str | None:
    """The widest vector family in ``isa`` ("AVX-512F" -> "AVX-512"; ``slug``: "avx512", for directory names), or
    None when the ISA is not recorded."""
    if isa is None:
        return None
    for name, short in ISA_LEVELS:
        if name in isa:
            return short if slug else ("AVX-512" if name == "AVX-512F" else name)
    return "scalar"


def device_id(ident: dict) -> str:
    """The directory name of a device's tables, derived from its identity so that two devices never share one:
    ``<cpu or gpu>-<isa level>-<cores>c-<backend><major.minor>-<threads>t-<hash of the identity>``, e.g.
    ``amd-epyc-avx2-2c-onnxruntime1.32-2t-5c1e07a2``."""
    hw = ident.get("gpu") if ident.get("device") == "cuda" else ident.get("cpu")
    level = isa_level(ident.get("isa"), slug=True) or "isa-unknown"
    key = json.dumps({k: ident.get(k) for k in DEVICE_FIELDS + ("threads",)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    release = ident.get("backend_release") or _release(ident.get("backend_version")) or ""
    return (
        f"{_slug(hw or 'unknown')}-{level}-{ident.get('cores', 0)}c-{ident.get('backend', '?')}{release}"
        f"-{ident.get('threads', 0)}t{'-cuda' if ident.get('device') == 'cuda' else ''}-{digest}"
    )


def device_name(ident: dict) -> str:
    """A device in a few words: ``AMD EPYC (AVX2, 2 cores), onnxruntime 1.32, 2 threads``."""
    if ident.get("device") == "cuda":
        hw = f"{ident.get('gpu') or 'a GPU'} (CUDA {ident.get('cuda') or '?'})"
    else:
        level = isa_level(ident.get("isa"))
        hw = f"{ident.get('cpu') or 'an unknown CPU'} ({level or 'ISA not recorded'}, {ident.get('cores', '?')} cores)"
    release = ident.get("backend_release") or _release(ident.get("backend_version"))
    threads = ident.get("threads", "?")
    return f"{hw}, {ident.get('backend', '?')} {release}, {threads} thread{'s' if threads != 1 else ''}"


@dataclass(frozen=True)
class Difference:
    """One way a table's device differs from this machine: ``note`` differences keep the table usable."""

    field: str
    text: str
    note: bool = False


def compare(table: dict, here: dict) -> list[Difference]:
    """How the device a table was measured on (``table``) differs from this one (``here``), in plain words.

    A field the table does not record (a table built before autoprune recorded it) is a difference: nothing shows
    the table is this device's. A backend patch release is a note.
    """
    out: list[Difference] = []
    t_isa, h_isa = table.get("isa"), here.get("isa")
    if "isa" not in table and "isa" in here:
        out.append(
            Difference(
                "isa",
                "the table does not record its CPU's instruction set (it was built before "
                "autoprune recorded it), so nothing shows it was measured on this CPU",
            )
        )
    elif t_isa != h_isa:
        out.append(Difference("isa", _isa_words(t_isa, h_isa)))
    t_rel, h_rel = _release(table.get("backend_version")), _release(here.get("backend_version"))
    backend = here.get("backend", "the backend")
    if table.get("backend") == here.get("backend") and t_rel != h_rel:
        out.append(Difference("backend_release", f"{backend} {h_rel} here; the table was measured with {t_rel}"))
    elif table.get("backend") == here.get("backend") and table.get("backend_version") != here.get("backend_version"):
        out.append(
            Difference(
                "backend_version",
                f"{backend} {here.get('backend_version')} here, "
                f"{table.get('backend_version')} in the table (a patch release: "
                "the same kernels)",
                note=True,
            )
        )
    fam = ("family", "cpu_model", "stepping")
    if any(f in table for f in fam) and any(table.get(f) != here.get(f) for f in fam):
        out.append(Difference("family", f"this CPU is {_fms(here)}; the table's was {_fms(table)}"))
    for f in DEVICE_FIELDS:
        if f in ("isa", "backend_release", *fam) or f not in table or table.get(f) == here.get(f):
            continue
        label = LABELS.get(f, f)
        if f == "cores":
            out.append(Difference(f, f"this machine has {here.get(f)} cores; the table's had {table.get(f)}"))
        else:
            out.append(Difference(f, f"{label} here is {_show(here.get(f))}; the table's was {_show(table.get(f))}"))
    return out


def differences_text(diffs: list[Difference]) -> str:
    return "; ".join(d.text for d in diffs)


def _isa_words(table: list[str] | None, here: list[str] | None) -> str:
    if table is None or here is None:
        side = "the table's CPU" if table is None else "this CPU"
        return f"the instruction set of {side} is not known (/proc/cpuinfo had no flags), so they cannot be compared"
    lt, lh = isa_level(table), isa_level(here)
    if lt != lh:
        return f"this CPU has {lh}; the table's had {lt}"
    only_t, only_h = sorted(set(table) - set(here)), sorted(set(here) - set(table))
    parts = ([f"lacks {', '.join(only_t)}, which the table's had"] if only_t else []) + (
        [f"has {', '.join(only_h)}, which the table's lacked"] if only_h else []
    )
    return "this CPU " + " and ".join(parts)


def _fms(ident: dict) -> str:
    return (
        f"family {ident.get('family') or '?'} model {ident.get('cpu_model') or '?'} "
        f"stepping {ident.get('stepping') or '?'}"
    )


def _show(v: object) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return repr(v) if v not in (None, "") else "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"
