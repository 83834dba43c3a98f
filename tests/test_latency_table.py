"""Latency look-up tables: interpolation, regimes, device fingerprint, probe round trip, bad files.

Tiny models (CIFAR ResNet-20 at 16x16) and few repeats keep this file fast; no test asserts a wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoprune.cost.calibration_set import (
    CALIBRATION_RANDOM,
    CALIBRATION_RATIOS,
    calibration_networks,
    random_policies,
)
from autoprune.cost.device_identity import device_id, identify
from autoprune.cost.flops import costs
from autoprune.cost.latency_table import LatencyTable, default_table_path
from autoprune.cost.measure import Timing
from autoprune.cost.probes import plan_layers
from autoprune.cost.table_build import plan_rows, table_from_measurements
from autoprune.errors import UserError
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.probe_transfer import export_probes, import_probes

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def graph():
    model, _ = build_model("resnet20", use_default_weights=False)
    return analyze(model, SHAPE, "resnet20")


def _synthetic(graph, fn, block=1, align=1, grid=4, fixed=0.0, scale=1.0) -> LatencyTable:
    """A table whose 'measurements' are ``fn(op, regime, c_in, c_out)``: prediction must reproduce it."""
    rows, _ = plan_rows(plan_layers(graph, block, align, grid))
    timings = {}
    for r in rows.itertuples():
        v = fn(r.op, r.regime, r.c_in, r.c_out)
        timings[r.probe] = Timing(v, v, v, 1)
    df = table_from_measurements(rows, timings)
    meta = {
        "format": "autoprune.latency_table/1",
        "model": graph.model_name,
        "input_shape": list(graph.input_shape),
        "backend": "onnxruntime",
        "threads": 1,
        "device": "cpu",
        "fixed_us": fixed,
        "scale": scale,
        "channel_block": block,
        "channel_align": align,
        "fingerprint": identify("onnxruntime", 1),
    }
    return LatencyTable(df, meta)


def _layer_channels(graph, table, kept):
    """(c_in, c_out) of every table layer under ``kept``, straight from the cost terms."""
    t, k = graph.terms, np.asarray(kept, float)
    out = []
    for name in table.layers:
        j = t.layer_names.index(name)
        out.append((round(float(t.in_w[j] @ k + t.in_c[j])), round(float(t.out_w[j] @ k + t.out_c[j]))))
    return out


def _bilinear(op, regime, ci, co):
    return 1.0 + 2.0 * ci + 3.0 * co + 0.25 * ci * co


def test_bilinear_interpolation_is_exact_between_grid_points(graph):
    table = _synthetic(graph, _bilinear, grid=3, fixed=100.0, scale=2.0)
    predict = table.predictor(graph)
    rng = np.random.default_rng(0)
    for _ in range(20):
        kept = np.array([rng.integers(1, c + 1) for c in graph.channels])
        expected = 100.0 + 2.0 * sum(_bilinear(None, None, ci, co) for ci, co in _layer_channels(graph, table, kept))
        assert predict(kept) == pytest.approx(expected, rel=1e-9)


def test_grid_points_reproduce_the_measurement(graph):
    table = _synthetic(graph, lambda op, r, ci, co: float(ci * 1000 + co))
    predict = table.predictor(graph)
    per_layer = predict.layer_us(graph.channels)
    full = table.df.groupby("layer", sort=False).apply(
        lambda d: d.loc[(d.c_in == d.c_in.max()) & (d.c_out == d.c_out.max()), "median_us"].iloc[0]
    )
    np.testing.assert_allclose(per_layer, full.loc[table.layers].to_numpy())


def test_interpolation_is_monotone_for_a_monotone_table(graph):
    table = _synthetic(graph, lambda op, r, ci, co: float(ci * co + ci + co))
    predict = table.predictor(graph)
    prev = 0.0
    for ratio in np.linspace(0.1, 1.0, 12):
        v = predict(np.maximum(1, np.round(graph.channels * ratio)).astype(int))
        assert v >= prev - 1e-9
        prev = v


def test_regimes_and_block_padding(graph):
    """Unaligned input channels use the unaligned curve; blocked output channels are priced padded to a block."""

    def fn(op, regime, ci, co):
        return (1000.0 if regime == "unaligned" else 0.0) + float(ci) + 0.001 * co

    table = _synthetic(graph, fn, block=16, align=4, grid=6)
    predict = table.predictor(graph)
    g = [grp.name for grp in graph.groups].index("layer2.0.conv1")  # 32 channels, drives layer2.0.conv2's input
    layer = table.layers.index("layer2.0.conv2")
    kept = graph.channels.copy()
    kept[g] = 20  # multiple of 4: blocked, c_in padded to 32
    assert predict.layer_us(kept)[layer] == pytest.approx(32 + 0.001 * 32, abs=1e-6)
    kept[g] = 21  # not a multiple of 4 (and >= one block): the unaligned kernel
    assert predict.layer_us(kept)[layer] > 1000
    # blocked conv whose output group keeps 20 of 32: priced at 32 output channels
    layer1 = table.layers.index("layer2.0.conv1")
    kept = graph.channels.copy()
    kept[g] = 20
    a = predict.layer_us(kept)[layer1]
    kept[g] = 32
    assert a == pytest.approx(predict.layer_us(kept)[layer1])


def test_predictor_drives_a_latency_budget(graph):
    from autoprune.budget import parse_budget
    from autoprune.cost.model import CostModel
    from autoprune.problem import Problem
    from autoprune.search.baselines import uniform_kept

    table = _synthetic(graph, _bilinear, fixed=50.0)
    predict = table.predictor(graph)
    problem = Problem(graph, CostModel(graph, latency=predict), parse_budget("latency=60%"))
    kept, _ = uniform_kept(problem)
    assert predict(kept) <= 0.6 * predict(graph.channels) + 1e-6
    assert predict(kept) < predict(graph.channels)


def test_table_for_another_model_is_refused(graph):
    table = _synthetic(graph, _bilinear)
    other_model, _ = build_model("resnet32", use_default_weights=False)
    with pytest.raises(UserError):
        table.predictor(analyze(other_model, SHAPE, "resnet32"))


def test_build_save_load_predict(built, graph):
    table = LatencyTable.load(built)
    assert table.model == "resnet20" and table.input_shape == SHAPE and table.backend == "onnxruntime"
    assert table.threads == 1
    assert (table.df["median_us"] > 0).all()
    assert (table.df["p10_us"] <= table.df["p90_us"]).all()
    meta = json.loads(built.with_suffix(".json").read_text())
    names = [c["name"] for c in meta["calibration"]]
    uniform = [f"keep-{r:.2f}" for r in CALIBRATION_RATIOS]
    assert names == uniform + [f"random-{i:02d}" for i in range(CALIBRATION_RANDOM)]
    assert meta["unpruned_us"]["name"] == "keep-1.00" and meta["unpruned_us"]["median_us"] > 0
    for key in (
        "vendor",
        "family",
        "cpu_model",
        "stepping",
        "cpu",
        "isa",
        "cores",
        "threads",
        "os",
        "backend",
        "backend_version",
        "backend_release",
        "providers",
        "batch",
        "input_shape",
        "date",
    ):
        assert key in meta["fingerprint"]
    here = identify("onnxruntime", 1)
    assert meta["device_id"] == device_id({**here, "batch": 1}) and "-1t-" in meta["device_id"]
    sig = meta["speed_signature"]
    assert len(sig["probes"]) == 4 and all(v > 0 for v in sig["probes"].values()) and sig["noise"] >= 0
    assert meta["affinity"] is False
    v = table.predictor(graph)(graph.channels)
    assert np.isfinite(v) and v > 0
    assert table.check_device() == []
    check = table.check_speed()  # the same machine minutes later: a ratio near 1 (not asserted: machines vary)
    assert check is not None and check.ratio > 0 and check.tolerance >= 0.10


def test_calibration_set_has_irregular_policies_that_validate_never_draws(graph):
    nets = calibration_networks(graph, 4)
    full = costs(graph, graph.channels)["flops"]
    randoms = [k for name, k in nets.items() if name.startswith("random-")]
    assert len(randoms) == CALIBRATION_RANDOM
    shares = sorted(costs(graph, k)["flops"] / full for k in randoms)
    assert shares[0] < 0.35 and shares[-1] > 0.85  # spread over the FLOPs range
    pruned = [k for k in randoms if costs(graph, k)["flops"] / full < 0.9]
    assert pruned and all(len({int(c) / g.channels for c, g in zip(k, graph.groups, strict=True)}) > 1 for k in pruned)
    assert all((k % 4 == 0).all() for k in randoms)  # whole blocks of the table's channel block
    validated = random_policies(graph, 20, seed=0, round_to=4)
    assert not any(np.array_equal(a, b) for a in pruned for b in validated)


def test_build_interleaves_calibration_rounds_with_probe_passes(built):
    meta = json.loads(built.with_suffix(".json").read_text())
    assert meta["passes"] == 2 and meta["rounds"] == 3
    for c in meta["calibration"]:
        assert len(c["round_medians"]) == 3 and c["median_us"] == pytest.approx(np.median(c["round_medians"]))


def test_validate_reports_error_retest_and_drift(built):
    from autoprune.latency_workflows import validate_table

    table = LatencyTable.load(built)
    df, s = validate_table(table, samples=4, repeats=3, warmup=1, rounds=2)
    assert len(df) == 4 and (df["measured_us"] > 0).all() and (df["retest_us"] > 0).all()
    assert df["policy"].iloc[0] == 0 and df["flops_share"].iloc[0] == pytest.approx(1.0)  # policy 0: unpruned
    for key in ("mape", "spearman", "retest_mape", "speed_vs_build", "mape_recalibrated"):
        assert key in s
    assert s["speed_vs_build"] > 0 and np.isfinite(s["mape_recalibrated"])
    assert np.isfinite(s["mape_reanchored"]) and s["speed_at_anchor"] > 0 and df["reanchored_us"].gt(0).all()
    assert len(s["calibration_today"]["measured_us"]) == len(CALIBRATION_RATIOS) + CALIBRATION_RANDOM  # re-timed


def test_reanchoring_refits_the_level_and_keeps_the_probes(built, graph):
    table = LatencyTable.load(built)
    twice = {
        c["name"]: Timing(2 * c["median_us"], 2 * c["p10_us"], 2 * c["p90_us"], 3) for c in table.meta["calibration"]
    }  # a machine now twice as slow as at the build
    anchored = table.reanchored(graph, twice)
    assert anchored.scale == pytest.approx(2 * table.scale) and anchored.fixed_us == pytest.approx(2 * table.fixed_us)
    assert anchored.meta["anchor"]["speed_vs_build"] == pytest.approx(2.0)
    assert anchored.meta["anchor"]["networks"] == len(twice)
    kept = graph.channels // 2
    assert anchored.predict(graph, kept) == pytest.approx(2 * table.predict(graph, kept))
    assert anchored.df is table.df  # the probe grid is not re-measured
    again = anchored.reanchored(graph, twice)  # the build's calibration stays on record through re-anchoring
    assert again.meta["anchor"]["scale_at_build"] == pytest.approx(table.scale)
    with pytest.raises(UserError, match="no calibration network"):
        table.reanchored(graph, {})


def test_anchor_command_rewrites_the_calibration_only(built, tmp_path):
    from typer.testing import CliRunner

    from autoprune.cli import app

    out = tmp_path / "anchored.csv"
    r = CliRunner().invoke(
        app, ["latency-table", "anchor", "--table", str(built), "--out", str(out), "--rounds", "1", "--repeats", "3"]
    )
    assert r.exit_code == 0, r.output
    assert "machine now:" in r.output and out.is_file()
    before, after = LatencyTable.load(built), LatencyTable.load(out)
    assert after.meta["anchor"]["networks"] == len(before.meta["calibration"]) and after.scale > 0
    assert after.meta["anchor"]["speed_vs_build"] > 0
    assert after.df[["probe", "median_us"]].equals(before.df[["probe", "median_us"]])
    shown = CliRunner().invoke(app, ["latency-table", "show", str(out)])
    assert shown.exit_code == 0 and "re-anchored" in shown.output


def test_fingerprint_mismatch_refused_or_warned(built, tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text(built.read_text())
    meta = json.loads(built.with_suffix(".json").read_text())
    meta["fingerprint"]["cpu"] = "Some Other CPU 9000"
    csv.with_suffix(".json").write_text(json.dumps(meta))
    table = LatencyTable.load(csv)
    with pytest.raises(UserError, match="another device.*Some Other CPU 9000.*--force"):
        table.check_device(refuse=True)
    diffs = table.check_device()
    assert [d.field for d in diffs] == ["cpu"]
    err = capsys.readouterr().err
    assert "measured on another device: Some Other CPU 9000" in err and "PREDICTION" in err
    assert [d.field for d in table.check_device(force=True, refuse=True)] == ["cpu"]  # --force: proceeds


def test_validate_command_refuses_foreign_table(built, tmp_path):
    from typer.testing import CliRunner

    from autoprune.cli import app

    csv = tmp_path / "t.csv"
    csv.write_text(built.read_text())
    meta = json.loads(built.with_suffix(".json").read_text())
    meta["fingerprint"]["backend_version"] = "0.0.1"
    csv.with_suffix(".json").write_text(json.dumps(meta))
    result = CliRunner().invoke(app, ["latency-table", "validate", "--table", str(csv), "--samples", "3"])
    assert isinstance(result.exception, UserError)
    assert "the table was measured with 0.0" in str(result.exception)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar", "bad_json", "missing_column", "empty"])
def test_bad_tables_are_one_line_user_errors(built, tmp_path, damage):
    csv = tmp_path / "t.csv"
    text = built.read_text()
    csv.write_text(text)
    csv.with_suffix(".json").write_text(built.with_suffix(".json").read_text())
    if damage == "truncate":
        csv.write_text(text[: len(text) // 2 + 7])  # cut in the middle of a row
    elif damage == "garbage":
        lines = text.splitlines()
        lines[3] = "x,y,\x00\x01zz,1,2"
        csv.write_text("\n".join(lines))
    elif damage == "no_sidecar":
        csv.with_suffix(".json").unlink()
    elif damage == "bad_json":
        csv.with_suffix(".json").write_text("{not json")
    elif damage == "missing_column":
        pd.read_csv(built).drop(columns=["median_us"]).to_csv(csv, index=False)
    elif damage == "empty":
        csv.write_text("")
    with pytest.raises(UserError) as info:
        LatencyTable.load(csv)
    assert "\n" not in str(info.value)


def test_probe_round_trip(tmp_path, graph):
    """probes -> measure_probes.py (a separate process, onnxruntime + numpy only) -> import -> predict."""
    out = tmp_path / "probes"
    n = export_probes("resnet20", SHAPE, out, threads=1, grid=2, block=16, align=4)
    assert n["probes"] > 0 and (out / "measure_probes.py").is_file()
    with pytest.raises(UserError, match="measure_probes.py"):  # not measured yet
        import_probes(out)
    # torch and autoprune are made unimportable: the script must stand alone
    code = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['autoprune'] = None; "
        f"sys.argv = ['measure_probes.py', {str(out)!r}, '--repeats', '2', '--warmup', '1', '--e2e-repeats', '2']; "
        f"runpy.run_path({str(out / 'measure_probes.py')!r}, run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    measured = pd.read_csv(out / "measured.csv")
    assert len(measured) == n["probes"] + n["networks"] + 4 and (measured["median_us"] > 0).all()  # + signature
    table = import_probes(out)
    plan = pd.read_csv(out / "plan.csv")
    assert len(table.df) == len(plan)
    assert table.check_device() == []  # the device's identity was read there by the copied device_identity.py
    assert table.fingerprint["isa"] == identify("onnxruntime", 1)["isa"]
    assert len(table.meta["speed_signature"]["probes"]) == 4
    saved = table.save(tmp_path / "imported.csv")
    v = LatencyTable.load(saved).predictor(graph)(graph.channels)
    assert np.isfinite(v) and v > 0
    # a truncated measurement file is refused in one line
    text = (out / "measured.csv").read_text()
    (out / "measured.csv").write_text(text[: len(text) // 2])
    with pytest.raises(UserError) as info:
        import_probes(out)
    assert "\n" not in str(info.value)


def test_calibration_fit():
    from autoprune.cost.latency_table import calibrate

    fixed, scale = calibrate([100, 200, 300], [150, 250, 350])
    assert fixed == pytest.approx(50) and scale == pytest.approx(1)
    fixed, scale = calibrate([100], [130])
    assert (fixed, scale) == (pytest.approx(30), 1.0)


def _copy_table(built, dest, **fingerprint) -> object:
    """A copy of the built table whose recorded device identity is changed by ``fingerprint``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(built.read_text())
    meta = json.loads(built.with_suffix(".json").read_text())
    meta["fingerprint"].update(fingerprint)
    dest.with_suffix(".json").write_text(json.dumps(meta))
    return dest


def _probes_stored_at_a_third(table) -> dict:
    """Rewrite ``table``'s stored speed signature to a third of its times, as if this machine now ran its reference
    probes 3x slower than at the build; returns the sidecar as written."""
    meta = json.loads(table.with_suffix(".json").read_text())
    meta["speed_signature"]["probes"] = {k: v / 3 for k, v in meta["speed_signature"]["probes"].items()}
    table.with_suffix(".json").write_text(json.dumps(meta))
    return meta


def _other_isa() -> list[str]:
    return (
        ["AVX", "AVX2", "FMA"]
        if "AVX-512F" in (identify("onnxruntime", 1)["isa"] or [])
        else ["AVX", "AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL"]
    )


SEARCH = [
    "search",
    "--model",
    "resnet20",
    "--input-shape",
    "1x3x16x16",
    "--strategy",
    "uniform",
    "--threads",
    "1",
    "--budget",
    "latency=80%",
]


def test_an_explicit_table_of_another_device_is_a_prediction_never_met(built, tmp_path, run_cli):
    """The user asked for another device's table: the budget is judged by its prediction, and the verdict, the
    summary table and report.md say "predicted for <device>, not measured there", never a plain "met"."""
    foreign = _copy_table(built, tmp_path / "phone" / "resnet20-1x3x16x16.csv", isa=_other_isa(), cpu="Other CPU")
    code, out, err = run_cli(*SEARCH, "--table", foreign, "--out", tmp_path / "run")
    assert code == 0, err
    assert "measured on another device: Other CPU" in err and "this cpu has" in err.lower()
    assert "predicted for Other CPU" in out and "not measured there" in out
    assert ": met" not in out and "NOT met" not in out and "within the budget as predicted" in out
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["metrics"]["latency_measured_elsewhere"] and "latency_checks" not in policy["metrics"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "not measured there" in report and "**met**" not in report


def test_without_table_the_search_builds_one_of_this_device_and_passes_over_another(
    built, tmp_path, monkeypatch, run_cli
):
    """A cached table of another ISA sits where the old code looked for one: the default path passes it over,
    builds a table here (once; cached by this device's id) and the budget is measured here."""
    import autoprune.pipeline.setup as setup
    from autoprune.cost.device_identity import device_id as id_of

    cache = tmp_path / "cache"
    monkeypatch.setattr(setup, "CACHE_DIR", cache)
    ident = json.loads(built.with_suffix(".json").read_text())["fingerprint"]
    other = dict(ident, isa=_other_isa())
    _copy_table(built, cache / "latency_tables" / id_of(other) / "resnet20-1x3x16x16.csv", isa=other["isa"])
    code, out, err = run_cli(*SEARCH, "--out", tmp_path / "run")
    assert code in (0, 3), err
    assert "passed over" in out and "this CPU has" in out and "building one here" in out
    table = json.loads((tmp_path / "run" / "policy.json").read_text())["search"]["table"]
    assert f"/{id_of(identify('onnxruntime', 1))}/" in table and id_of(other) not in table
    assert "latency_checks" in json.loads((tmp_path / "run" / "policy.json").read_text())["metrics"]  # measured
    assert "measured vs budget" in out  # the verdict is this machine's measurement
    code, out, _ = run_cli(*SEARCH, "--out", tmp_path / "run2")  # the cached table of this device is found
    assert "building one here" not in out and f"latency table of this device: {table}" in out


def test_a_speed_signature_off_the_tables_is_reported_with_the_anchor_command(built, tmp_path, run_cli):
    """A table whose stored reference timings are 3x faster than this machine runs them now: the search says so,
    with the ratio and the command that re-fits the table, and records the check."""
    slow = _copy_table(built, tmp_path / "t" / "resnet20-1x3x16x16.csv")
    _probes_stored_at_a_third(slow)
    code, out, err = run_cli(*SEARCH, "--table", slow, "--out", tmp_path / "run")
    assert "speed signature" in err and f"autoprune latency-table anchor --table {slow}" in err
    check = json.loads((tmp_path / "run" / "policy.json").read_text())["search"]["speed_signature"]
    assert check["off"] and check["ratio"] > 2


def test_a_drifted_table_of_the_cache_is_re_anchored_before_the_search(built, tmp_path, monkeypatch, run_cli):
    """This device's table in autoprune's cache, whose stored reference timings are 3x faster than this machine
    runs them now: the search re-anchors it here (its calibration networks re-timed) and saves it over itself
    before pricing any policy, says so, records the fit before and after, and the next search finds it level."""
    import autoprune.pipeline.setup as setup

    cache = tmp_path / "cache"
    monkeypatch.setattr(setup, "CACHE_DIR", cache)
    path = default_table_path("resnet20", (1, 3, 16, 16), identify("onnxruntime", 1, "cpu"), cache / "latency_tables")
    _copy_table(built, path)
    meta = _probes_stored_at_a_third(path)
    code, out, err = run_cli(*SEARCH, "--out", tmp_path / "run")
    assert code in (0, 3), err
    assert "re-anchoring it here" in out and f"re-anchored {path}" in out and "WARNING: speed signature" not in out
    search = json.loads((tmp_path / "run" / "policy.json").read_text())["search"]
    assert search["speed_signature"]["off"] and search["table"] == str(path)
    fixed, scale = search["table_reanchored"]["fixed_us"], search["table_reanchored"]["scale"]
    assert fixed[0] == meta["fixed_us"] and scale[0] == meta["scale"] and (fixed[1], scale[1]) != (fixed[0], scale[0])
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["fixed_us"] == fixed[1] and saved["anchor"]["speed_signature"]["probes"]
    code, out, err = run_cli(*SEARCH, "--out", tmp_path / "run2")
    assert "re-anchor" not in out  # today's level is the table's now
    assert json.loads((tmp_path / "run2" / "policy.json").read_text())["search"]["table_reanchored"] is None


def test_a_drifted_shipped_table_is_re_anchored_into_the_cache_and_left_as_shipped(
    built, tmp_path, monkeypatch, run_cli
):
    """This device's table shipped in the repository, 3x off this machine's speed: the search re-anchors a copy
    into autoprune's cache and searches with it, the shipped files stay byte for byte, and the next search finds the
    cache's copy first (level, so nothing is re-timed again)."""
    import autoprune.cost.table_choice as table_choice
    import autoprune.pipeline.setup as setup

    cache, shipped_root = tmp_path / "cache", tmp_path / "shipped"
    monkeypatch.setattr(setup, "CACHE_DIR", cache)
    monkeypatch.setattr(setup, "SHIPPED_TABLES", shipped_root)
    monkeypatch.setattr(table_choice, "SHIPPED_TABLES", shipped_root)
    here = identify("onnxruntime", 1, "cpu")
    shipped = _copy_table(built, default_table_path("resnet20", (1, 3, 16, 16), here, shipped_root))
    _probes_stored_at_a_third(shipped)
    as_shipped = (shipped.read_bytes(), shipped.with_suffix(".json").read_bytes())
    copy = default_table_path("resnet20", (1, 3, 16, 16), here, cache / "latency_tables")
    code, out, err = run_cli(*SEARCH, "--out", tmp_path / "run")
    assert code in (0, 3), err
    assert f"latency table of this device: {shipped}" in out and f"into {copy.resolve()}" in out
    assert (shipped.read_bytes(), shipped.with_suffix(".json").read_bytes()) == as_shipped
    search = json.loads((tmp_path / "run" / "policy.json").read_text())["search"]
    assert Path(search["table"]).resolve() == copy.resolve() and search["table_reanchored"]["from"] == str(shipped)
    assert json.loads(copy.with_suffix(".json").read_text())["fixed_us"] == search["table_reanchored"]["fixed_us"][1]
    code, out, err = run_cli(*SEARCH, "--out", tmp_path / "run2")
    assert code in (0, 3), err
    assert f"latency table of this device: {copy}" in out and "re-anchor" not in out


def test_timing_a_module_leaves_it_where_and_as_it_was():
    """The torch backend times a copy: the caller's module keeps its mode and its parameters (on a GPU table the
    unpruned model would otherwise be left on the GPU, away from the pruner that copies it)."""
    from autoprune.cost.measure import measure_interleaved, measure_model

    model, _ = build_model("resnet20", use_default_weights=False)
    model.train()
    params = [id(p) for p in model.parameters()]
    (timing,) = measure_interleaved([model], (1, 3, 16, 16), "torch", 1, 1, 3, 1)
    assert timing.repeats == 3 and timing.median_us > 0
    assert measure_model(model, (1, 3, 16, 16), "torch", 1, 1, 3).median_us > 0
    assert model.training
    assert [id(p) for p in model.parameters()] == params
