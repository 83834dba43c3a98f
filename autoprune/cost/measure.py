"""End-to-end latency measurement, the way a serving stack runs a model.

onnxruntime: a session with full graph optimisation (so conv + BN + activation fusion is what is timed), a fixed
number of intra-op threads, warm-up runs, then the median of timed repeats with the 10th/90th percentiles as the
spread. torch: the eager model under ``inference_mode`` with the same protocol.

On a shared or virtual machine one session's median can be far off for a while (another tenant, a
frequency change) and the same network re-measured a minute later is back to normal. Comparisons between networks
(calibration, validation, unpruned vs pruned) therefore use :func:`measure_interleaved`: every network is measured
in several rounds, a fresh session each, the rounds interleaved across networks, and the median of the per-round
medians is the figure, so a disturbance hits one round of several networks instead of the whole measurement of one.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import UserError
from autoprune.onnx_graph import onnx_bytes

BACKENDS = ("onnxruntime", "torch")


# A latency table's prediction of the unpruned model is the device's reference level: a measurement in which the
# unpruned model runs more than this much slower than predicted was taken while the device was not in its table's
# state (another job on the cores, a throttled VM), and is repeated after a pause before it may reject a policy.
DEVICE_SLOWDOWN_TOLERANCE = 0.15


def device_slowdown(unpruned_measured_us: float, unpruned_predicted_us: float) -> float | None:
    """How much slower than its table's prediction the unpruned model ran (0.43: 43 % slower); None within
    :data:`DEVICE_SLOWDOWN_TOLERANCE`, where the device counts as in its table's state."""
    slowdown = unpruned_measured_us / unpruned_predicted_us - 1
    return slowdown if slowdown > DEVICE_SLOWDOWN_TOLERANCE else None


# the logical CPUs onnxruntime's intra-op threads are pinned to while :func:`pinned` is active (None: not pinned)
_pinned_cpus: list[int] | None = None


@contextmanager
def pinned(threads: int, enabled: bool = True) -> Iterator[None]:
    """Pin the measuring thread to one core and onnxruntime's other intra-op threads to the next ``threads - 1``
    (its ``session.intra_op_thread_affinities``), for the sessions made inside the block; a no-op where the OS
    offers no affinity (``os.sched_setaffinity``) or ``enabled`` is False.

    Why: on a shared VM with few cores an unpinned pair of threads now and then lands on one core and the run takes the
    one-thread time; pinning is the protocol a table may be built and served with (``--affinity``)."""
    global _pinned_cpus
    if not enabled or not hasattr(os, "sched_setaffinity") or _pinned_cpus is not None:  # (already pinned)
        yield
        return
    before = os.sched_getaffinity(0)
    cpus = sorted(before)[: max(1, threads)]
    previous, _pinned_cpus = _pinned_cpus, cpus
    os.sched_setaffinity(0, {cpus[0]})  # the calling thread runs onnxruntime's first share of the work
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        _pinned_cpus = previous


def _session_options(threads: int):
    """onnxruntime session options as a serving stack sets them: full graph optimisation, ``threads`` intra-op
    threads, sequential execution (and pinned threads inside :func:`pinned`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if _pinned_cpus is not None and threads > 1:  # 1-based logical processors, one per thread but the caller's
        extra = [(_pinned_cpus + _pinned_cpus)[i] + 1 for i in range(1, threads)]
        so.add_session_config_entry("session.intra_op_thread_affinities", ";".join(map(str, extra)))
    return so


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    repeats: int
    round_medians: tuple[float, ...] = ()  # per-round medians when measured in rounds (:func:`measure_interleaved`)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["round_medians"] = list(self.round_medians)
        return d


def timing_from_samples(samples_us: list[float] | np.ndarray) -> Timing:
    s = np.asarray(samples_us, dtype=np.float64)
    return Timing(float(np.median(s)), float(np.percentile(s, 10)), float(np.percentile(s, 90)), len(s))


def ort_session(onnx_model: bytes, threads: int = 2, device: str = "cpu"):
    import onnxruntime as ort

    so = _session_options(threads)
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("onnxruntime has no CUDA provider here: install onnxruntime-gpu or use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(onnx_model, so, providers=providers)


def time_samples(fn, warmup: int, repeats: int) -> list[float]:
    """Wall time (µs) of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def time_callable(fn, warmup: int, repeats: int) -> Timing:
    return timing_from_samples(time_samples(fn, warmup, repeats))


def measure_onnx(
    onnx_model: bytes,
    input_shape: tuple[int, ...],
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 100,
    device: str = "cpu",
) -> Timing:
    sess = ort_session(onnx_model, threads, device)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    return time_callable(lambda: sess.run(None, {name: x}), warmup, repeats)


def measure_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    backend: str = "onnxruntime",
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 100,
    device: str = "cpu",
) -> Timing:
    """Median end-to-end latency of ``model`` on one input of ``input_shape``."""
    if backend == "onnxruntime":
        return measure_onnx(
            onnx_bytes(model, input_shape, dynamic_batch=False), input_shape, threads, warmup, repeats, device
        )
    if backend == "torch":
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model = _timed_copy(model, device)
            x = torch.randn(*input_shape, device=device)
            return time_callable(lambda: _torch_forward(model, x, device), warmup, repeats)
        finally:
            torch.set_num_threads(prev)
    raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def _timed_copy(model: nn.Module, device: str) -> nn.Module:
    """The module as the torch backend times it: a copy in eval mode on ``device``, so that timing leaves the
    caller's module where and as it was (the unpruned model stays on the CPU for the pruner's surgery, in the
    mode its owner set)."""
    return copy.deepcopy(model).eval().to(device)


def _torch_forward(model: nn.Module, x: torch.Tensor, device: str) -> None:
    with torch.inference_mode():
        model(x)
    if device == "cuda":
        torch.cuda.synchronize()


def measure_interleaved(
    models: list[nn.Module | bytes],
    input_shape: tuple[int, ...],
    backend: str = "onnxruntime",
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 3,
    device: str = "cpu",
) -> list[Timing]:
    """End-to-end latency of several networks, measured in ``rounds`` interleaved rounds (a fresh onnxruntime
    session per network and round). Each :class:`Timing`'s median is the median of its round medians; p10/p90 are
    over all timed runs; ``round_medians`` keeps the rounds (a retest is the same figure from other rounds).

    ``models``: modules, or serialised ONNX models for onnxruntime (exported once by the caller)."""
    if rounds < 1:
        raise UserError("rounds must be at least 1")
    if backend == "onnxruntime":
        data = [m if isinstance(m, bytes) else onnx_bytes(m, input_shape, dynamic_batch=False) for m in models]
    elif backend == "torch":
        if any(isinstance(m, bytes) for m in models):
            raise UserError("the torch backend measures modules, not ONNX models")
        nets = [_timed_copy(m, device) for m in models]
    else:
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    samples: list[list[float]] = [[] for _ in models]
    medians: list[list[float]] = [[] for _ in models]
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    prev = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for i in range(len(models)):
                if backend == "onnxruntime":
                    sess = ort_session(data[i], threads, device)
                    feed = {sess.get_inputs()[0].name: x}
                    run = lambda sess=sess, feed=feed: sess.run(None, feed)  # noqa: E731
                else:
                    torch.set_num_threads(threads)
                    net, xt = nets[i], torch.from_numpy(x).to(device)
                    run = lambda net=net, xt=xt: _torch_forward(net, xt, device)  # noqa: E731
                s = time_samples(run, warmup, repeats)
                medians[i].append(float(np.median(s)))
                samples[i].extend(s)
    finally:
        torch.set_num_threads(prev)
    out = []
    for s, med in zip(samples, medians, strict=True):
        arr = np.asarray(s)
        out.append(
            Timing(
                float(np.median(med)),
                float(np.percentile(arr, 10)),
                float(np.percentile(arr, 90)),
                len(arr),
                tuple(float(v) for v in med),
            )
        )
    return out


def combine_rounds(rounds: list[Timing]) -> Timing:
    """One timing from several rounds of the same network: the median of the round medians (p10/p90: the median
    of the rounds' percentiles)."""
    med = [r.median_us for r in rounds]
    return Timing(
        float(np.median(med)),
        float(np.median([r.p10_us for r in rounds])),
        float(np.median([r.p90_us for r in rounds])),
        sum(r.repeats for r in rounds),
        tuple(med),
    )


LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def kernel_times_from_profile(events: list[dict], warmup: int, exclude: tuple[str, ...] = LAYOUT_OPS) -> list[float]:
    """Per timed run, the summed kernel time (µs) of the nodes onnxruntime's profiler recorded, less ``exclude``.

    Runs are the profiler's ``model_run`` spans; the first ``warmup`` are dropped.
    """
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    nodes = sorted(
        (e["ts"], e["dur"])
        for e in events
        if e.get("cat") == "Node"
        and e.get("name", "").endswith("_kernel_time")
        and e.get("args", {}).get("op_name") not in exclude
    )
    out, j = [], 0
    for start, end in runs:
        total = 0.0
        while j < len(nodes) and nodes[j][0] < start:
            j += 1
        while j < len(nodes) and nodes[j][0] <= end:
            total += nodes[j][1]
            j += 1
        out.append(total)
    return out[warmup:]


def measure_onnx_kernels(
    onnx_model: bytes,
    input_shape: tuple[int, ...],
    threads: int = 2,
    warmup: int = 3,
    repeats: int = 15,
    device: str = "cpu",
    exclude: tuple[str, ...] = LAYOUT_OPS,
) -> Timing:
    """Kernel time of an operator probe, without the layout conversions the probe needs only because it stands
    alone: in a served network the blocked convs pass blocked tensors to each other and no reorder runs between
    them. Timed by onnxruntime's own profiler, per run (median and p10/p90 over the timed runs)."""
    import json
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = _session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "probe")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(onnx_model, so, providers=providers)
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
        for _ in range(warmup + repeats):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    return timing_from_samples(kernel_times_from_profile(events, warmup, exclude))
