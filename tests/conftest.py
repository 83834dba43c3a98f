"""Shared fixtures: tiny models and synthetic data, so the suite runs in minutes on two CPU cores."""

from __future__ import annotations

import sys

import pytest
import torch

torch.set_num_threads(2)

TINY_SHAPE = (1, 1, 16, 16)


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test (modules of large models use it: on 2 shared cores, a second
    thread's spinning costs more than it gives)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A real (tiny) latency table of resnet20 at 1x3x16x16, measured on this machine and saved."""
    from autoprune.latency_workflows import build_table

    table = build_table("resnet20", (1, 3, 16, 16), threads=1, grid=2, warmup=1, repeats=3, e2e_repeats=3)
    path = tmp_path_factory.mktemp("table") / "resnet20.csv"
    table.save(path)
    return path
