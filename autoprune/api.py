"""The public Python API: each function is what one CLI command calls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autoprune import atomic
from autoprune.data import check_compatible, load_data
from autoprune.evaluate import accuracy
from autoprune.models import build_model, resolve
from autoprune.training import TrainConfig, train


def train_model(
    model: str, data: str, out: str | Path, *, epochs: float = 15, lr: float = 0.1, batch_size: int = 128,
    schedule: str = "cosine", weight_decay: float = 5e-4, weights: str | Path | None = None,
    num_classes: int | None = None, seed: int = 0,
    on_step: Callable[[int, int, float, int, int], None] | None = None,
) -> dict:
    """Train ``model`` on ``data`` and save ``{"state_dict", "meta"}`` to ``out`` (loadable with weights_only)."""
    spec = resolve(model, num_classes)
    bundle = load_data(data, spec.input_shape[1:], num_classes=spec.num_classes, seed=seed)
    net, spec = build_model(model, weights, num_classes=num_classes or bundle.num_classes,
                            in_channels=bundle.image_shape[0], use_default_weights=False)
    check_compatible(bundle, spec.input_shape, spec.num_classes)
    steps_per_epoch = -(-len(bundle.train) // batch_size)
    n_epochs = int(-(-epochs // 1))

    def step_cb(step: int, total: int, loss: float) -> None:
        if on_step is not None:
            on_step(step, total, loss, (step - 1) // steps_per_epoch + 1, n_epochs)

    log = train(net, bundle.train, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule,
                                               weight_decay=weight_decay, seed=seed), on_step=step_cb)
    result = {
        "model": model, "data": data, "epochs": epochs, "lr": lr, "schedule": schedule, "seed": seed,
        "test_accuracy": accuracy(net, bundle.test), "held_out_accuracy": accuracy(net, bundle.held_out),
        "seconds": log.seconds,
    }
    atomic.torch_save({"state_dict": net.state_dict(), "meta": result}, out)
    return result
