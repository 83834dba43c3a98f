"""Shared fixtures: tiny models and synthetic data, so the suite runs in minutes on two CPU cores."""

from __future__ import annotations

import sys

import pytest
import torch

torch.set_num_threads(2)

TINY_SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="session")
def tiny_model():
    """A ResNet-20 (random weights) for 1x16x16 inputs: 12 groups with residual couplings."""
    from autoprune.models import build_model

    torch.manual_seed(0)
    model, _ = build_model("resnet20", in_channels=1, num_classes=10)
    return model


@pytest.fixture(scope="session")
def tiny_data():
    from autoprune.data import make_synthetic

    return make_synthetic((1, 16, 16), num_classes=10, n_train=256, n_test=128, held_out=64)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the CLI in-process as a user would; returns (exit code, stdout, stderr)."""
    from autoprune.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["autoprune", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
