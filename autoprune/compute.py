"""Where the forward and backward passes run: the device, mixed precision and the data loader's workers.

Every pass over data — a search's evaluations, BatchNorm recalibration, the fine-tune, ``train``, the Taylor/APoZ
importance and ``--reconstruct`` — runs on one :class:`Compute`. It is resolved once from the user's words
(``--device auto|cpu|cuda|cuda:N``, ``--amp auto|bf16|fp16|off``, ``--loader-workers``) and then only read:

* ``auto`` is CUDA when PyTorch sees a GPU, else the CPU — on a machine without one nothing changes;
* ``--amp auto`` is bf16 on a GPU that supports it (no loss scaling needed), fp16 with a ``GradScaler`` on an
  older one, and off on the CPU, where autocast rarely pays and changes the numbers;
* on CUDA the model runs ``channels_last`` (the tensor-core convolutions' layout) and the loader pins memory.

The latency *measurement* is not here: it runs the exported model in onnxruntime on the table's device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from autoprune.distributed import World, current, launched, usable_cores
from autoprune.errors import UserError

DEVICES = "auto | cpu | cuda | cuda:N"
AMP_MODES = ("auto", "bf16", "fp16", "off")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(text: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is a one-line error."""
    if isinstance(text, torch.device):
        return text
    text = (text or "auto").strip().lower().split(",")[0]  # a --workers list: this process takes the first
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise UserError(f"--device {text!r} is not a device: use {DEVICES}") from e
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"--device {text!r} is not supported: use {DEVICES}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {text}: PyTorch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {text}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def worker_devices(device: str, n: int) -> list[str]:
    """The devices of ``--workers n``: a comma-separated ``--device`` list round-robin; ``auto``/``cuda`` on a host
    with several GPUs gives each worker its own (``cuda:i mod GPUs``); anything else, the same for all."""
    names = [d.strip() for d in (device or "auto").split(",") if d.strip()]
    if len(names) > 1:
        return [names[i % len(names)] for i in range(n)]
    single = names[0] if names else "auto"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if single.lower() in ("auto", "cuda") and count > 1:
        return [f"cuda:{i % count}" for i in range(n)]
    return [single] * n


def resolve_amp(amp: str | None, device: torch.device) -> str:
    """The autocast precision for ``device``: ``bf16``, ``fp16`` or ``off``."""
    amp = (amp or "auto").strip().lower()
    if amp not in AMP_MODES:
        raise UserError(f"--amp {amp!r} is not a precision: use one of {', '.join(AMP_MODES)}")
    if device.type == "cpu":
        if amp == "fp16":
            raise UserError("--amp fp16 needs a CUDA device: on the CPU use --amp bf16 or off")
        return "off" if amp == "auto" else amp
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def default_loader_workers(device: torch.device) -> int:
    """Image-decoding processes for an ``imagefolder`` loader: none on the CPU (the cores run the model), up to 8 on
    a GPU host (decoding is then the bottleneck)."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, usable_cores() - 1))


@dataclass(frozen=True)
class Compute:
    """A resolved device, precision and loader: what every pass over data runs on."""

    device: torch.device = torch.device("cpu")
    amp: str = "off"  # bf16 | fp16 | off
    loader_workers: int = 0

    @classmethod
    def resolve(cls, device: str | None = "auto", amp: str | None = "auto", loader_workers: int | None = None):
        dev = resolve_device(device)
        if loader_workers is not None and loader_workers < 0:
            raise UserError(f"--loader-workers {loader_workers} must be 0 or more")
        workers = default_loader_workers(dev) if loader_workers is None else loader_workers
        return cls(dev, resolve_amp(amp, dev), workers)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.cuda

    @property
    def pin_memory(self) -> bool:
        return self.cuda

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` here (in place, as ``Module.to`` does) in this device's preferred memory layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch on this device (a no-op for data already moved there)."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling so that small gradients do not underflow; bf16 has float32's range."""
        return torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

    def describe(self) -> dict:
        """What ``policy.json`` and a training checkpoint record about where the passes ran."""
        d: dict = {"device": str(self.device), "amp": self.amp, "loader_workers": self.loader_workers}
        if self.cuda:
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d

    def __str__(self) -> str:
        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.cuda else ""
        return f"{self.device}{gpu}, amp {self.amp}"


CPU = Compute()


@contextlib.contextmanager
def placed(model: nn.Module, compute: Compute) -> Iterator[nn.Module]:
    """Run ``model`` on ``compute`` for the block, then put it back where it was: the unpruned model lives on the
    CPU, where Torch-Pruning's graph, the surgery and the ONNX export expect it; a model already there stays."""
    home = next((p.device for p in model.parameters()), compute.device)
    if home == compute.device:
        yield model
        return
    try:
        yield compute.place(model)
    finally:
        model.to(home).to(memory_format=torch.contiguous_format)


def resolve_for_processes(
    device: str | None = "auto", amp: str | None = "auto", loader_workers: int | None = None
) -> tuple[Compute, World]:
    """The compute of this process and its :class:`~autoprune.distributed.World`: under torchrun a process given
    ``cuda`` (or ``auto`` on a GPU host) takes ``cuda:LOCAL_RANK``, and joins the process group."""
    compute = Compute.resolve(device, amp, loader_workers)
    if not launched():
        return compute, current()
    named = (device or "auto").strip().lower()
    if compute.cuda and named in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        compute = Compute(torch.device("cuda", local), compute.amp, compute.loader_workers)
    return compute, current(compute.device)
