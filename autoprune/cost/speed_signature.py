"""A device's speed signature: a few fixed reference probes, timed when a table is built and again before it is used.

The identity (:mod:`autoprune.cost.device_identity`) says whether a table was measured on this *kind* of device; it
cannot see a machine of the right kind running in another state (another tenant on the cores, a power setting, a
throttled VM). The signature can: the same four operators — a 3x3 conv, a 1x1 conv, a depthwise conv and a linear
layer, independent of the model — are timed at build time and stored in the table; ``search``, ``validate`` and
``anchor`` re-time them (about a second) and compare. Off by more than the table's own noise, the table's level is
not this machine's level now, and ``autoprune latency-table anchor`` re-fits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoprune.cost.measure import Timing, measure_model, measure_onnx_kernels
from autoprune.cost.probes import REFERENCE_PROBES, ProbeSpec

# below this a signature's disagreement is not reported, whatever the build's passes agreed to: one re-timing of
# sub-millisecond kernels on a shared machine moves by a few percent
MIN_TOLERANCE = 0.10


def _time(spec: ProbeSpec, backend: str, threads: int, device: str, repeats: int) -> Timing:
    if backend == "onnxruntime":
        return measure_onnx_kernels(spec.onnx_bytes(), spec.input_shape, threads, 5, repeats, device)
    return measure_model(spec.torch_module(), spec.input_shape, "torch", threads, 5, repeats, device)


def time_signature(backend: str, threads: int, device: str = "cpu", *, passes: int = 4, repeats: int = 30) -> dict:
    """Time the reference probes in ``passes`` passes; each probe keeps its fastest pass (a disturbance only adds
    time; two-thread timings on a shared VM now and then run at the one-thread speed for a whole session).
    ``noise`` is how far that estimate moves on its own: the fastest of the odd passes against the fastest of the
    even ones, median over the probes — a retest of the statistic stored, not the spread of single passes."""
    runs = np.asarray(
        [
            [_time(s, backend, threads, device, repeats).median_us for s in REFERENCE_PROBES]
            for _ in range(max(2, passes))
        ]
    )
    odd, even = runs[0::2].min(0), runs[1::2].min(0)
    noise = float(np.median(np.abs(odd - even) / np.minimum(odd, even)))
    return {
        "probes": {s.probe_id: float(v) for s, v in zip(REFERENCE_PROBES, runs.min(0), strict=True)},
        "noise": noise,
        "passes": len(runs),
        "repeats": repeats,
    }


@dataclass(frozen=True)
class SignatureCheck:
    """This machine now against a table's stored signature: ``ratio`` > 1 means slower than at build."""

    ratio: float
    tolerance: float

    @property
    def off(self) -> bool:
        return bool(abs(np.log(self.ratio)) > np.log1p(self.tolerance))

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "tolerance": self.tolerance, "off": self.off}


def compare_signature(stored: dict, now: dict) -> SignatureCheck:
    """The median over the reference probes of now / stored; the tolerance is the noise of both timings, at least
    :data:`MIN_TOLERANCE`."""
    common = [k for k in stored["probes"] if k in now["probes"]]
    ratio = float(np.median([now["probes"][k] / stored["probes"][k] for k in common]))
    tolerance = max(MIN_TOLERANCE, 2 * max(float(stored.get("noise", 0)), float(now.get("noise", 0))))
    return SignatureCheck(ratio, tolerance)
