"""Past one CPU process: the device flags, DDP fine-tuning in two gloo processes, per-epoch checkpoints and resume.

The DDP runs start ``autoprune finetune --nproc 2`` as a user would (torchrun, two CPU processes talking gloo) on a
small user model (``tests._tiny_models:conv_flat``) that learns the synthetic task in seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from autoprune import api
from autoprune.compute import Compute, resolve_amp, worker_devices
from autoprune.data import load_data
from autoprune.distributed import World, without_flag
from autoprune.errors import UserError
from autoprune.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tests._tiny_models:conv_flat"
SHAPE = (8, 3, 16, 16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Weights trained to ~90 % on the synthetic task, and a uniform flops=50% policy for them."""
    from tests._tiny_models import conv_flat

    d = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    model = conv_flat()
    train(model, load_data("synthetic", SHAPE[1:]).train, TrainConfig(epochs=3, lr=0.01, batch_size=32))
    torch.save(model.state_dict(), d / "w.pt")
    api.search(
        MODEL,
        "synthetic",
        "flops=50%",
        weights=d / "w.pt",
        strategy="uniform",
        input_shape=SHAPE,
        finetune_epochs=0,
        measure=False,
        out=d / "run",
    )
    return d / "w.pt", d / "run" / "policy.json"


def autoprune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "autoprune", *map(str, args)], capture_output=True, text=True, env=env, **kwargs
    )


def finetune_args(weights: Path, policy: Path, data: str, epochs: int, out: Path) -> list[str]:
    return [
        "finetune", "--model", MODEL, "--weights", weights, "--policy", policy, "--data", data,
        "--epochs", str(epochs), "--batch-size", "32", "--kd", "--out", out, "--device", "cpu",
    ]  # fmt: skip


def test_two_gloo_processes_fine_tune_as_one_does_and_write_one_checkpoint(trained, tmp_path):
    weights, policy = trained
    accuracy = {}
    for n in (1, 2):
        out = tmp_path / f"nproc{n}" / "pruned.pt"
        r = autoprune(*finetune_args(weights, policy, "synthetic", 2, out), "--nproc", str(n))
        assert r.returncode == 0, r.stderr
        before, after = map(float, re.search(r"test accuracy ([\d.]+)% -> ([\d.]+)%", r.stdout).groups())
        assert f"{n} process(es)" in r.stdout and r.stdout.count("test accuracy") == 1  # rank 0 alone prints
        accuracy[n] = after / 100
        assert after > before
        # rank 0 alone writes: the model, its state_dict and one checkpoint, nothing per rank
        assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.checkpoint.pt", "pruned.pt", "pruned_state.pt"]
        ckpt = torch.load(out.with_name("pruned.checkpoint.pt"), weights_only=True)
        assert ckpt["world_size"] == n and ckpt["epoch"] == 2
    # the same global batch, steps and schedule: equal within the noise of 256 test images (binomial, 3 sigma)
    p = accuracy[1]
    assert abs(accuracy[2] - accuracy[1]) <= 3 * math.sqrt(2 * p * (1 - p) / 256) + 0.01, accuracy


def test_a_fine_tune_killed_mid_epoch_resumes_from_its_last_checkpoint(trained, tmp_path):
    weights, policy = trained
    data = "synthetic:6000"  # epochs of ~2 s: the kill lands inside the second one
    out = tmp_path / "killed" / "pruned.pt"
    ckpt = out.with_name("pruned.checkpoint.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "autoprune", *map(str, finetune_args(weights, policy, data, 3, out))]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fine-tune ended before it could be killed"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1 and not out.exists()

    r = autoprune(*finetune_args(weights, policy, data, 3, out), "--resume")
    assert r.returncode == 0, r.stderr
    steps_per_epoch = math.ceil((6000 - 1500) / 32)  # synthetic:N keeps a quarter for the held-out split
    assert f"resumed at step {steps_per_epoch}" in r.stdout
    resumed = torch.load(out.with_name("pruned_state.pt"), weights_only=True)

    # the same fine-tune, never interrupted, ends with the same weights (CPU kernels are deterministic)
    whole = tmp_path / "whole" / "pruned.pt"
    r = autoprune(*finetune_args(weights, policy, data, 3, whole))
    assert r.returncode == 0, r.stderr
    for name, value in torch.load(whole.with_name("pruned_state.pt"), weights_only=True).items():
        assert torch.allclose(resumed[name].float(), value.float(), atol=1e-5), name


def test_a_checkpoint_of_other_settings_is_refused(trained, tmp_path):
    weights, policy = trained
    out = tmp_path / "pruned.pt"
    assert autoprune(*finetune_args(weights, policy, "synthetic", 1, out)).returncode == 0
    r = autoprune(*finetune_args(weights, policy, "synthetic", 2, out), "--resume")
    assert r.returncode == 2
    assert r.stderr.startswith("error: checkpoint") and "epochs 1.0 there, 2.0 now" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["search", "finetune", "train", "prune"])
def test_device_cuda_without_a_gpu_is_one_line(run_cli, trained, command):
    weights, policy = trained
    args = {
        "search": ["--budget", "flops=50%", "--model", "resnet20", "--data", "synthetic", "--strategy", "uniform"],
        "finetune": finetune_args(weights, policy, "synthetic", 1, Path("unused.pt"))[1:],
        "train": ["--model", "resnet20", "--data", "synthetic", "--out", "unused.pt"],
        "prune": ["--model", MODEL, "--policy", policy, "--out", "unused.pt", "--criterion", "taylor"],
    }[command]
    code, _, err = run_cli(command, *without_flag(list(map(str, args)), "--device"), "--device", "cuda")
    assert code == 2
    assert err.strip().count("\n") == 0 and "no CUDA GPU" in err and "--device cpu" in err


def test_the_device_and_precision_are_recorded_in_the_policy(trained, tmp_path):
    policy = json.loads(trained[1].read_text())
    assert policy["search"]["compute"] == {"device": "cpu", "amp": "off", "loader_workers": 0}


def test_device_and_precision_words():
    assert Compute.resolve("cpu", "auto") == Compute(torch.device("cpu"), "off", 0)
    assert Compute.resolve("cpu", "bf16").amp == "bf16"
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(UserError, match="not a precision"):
        resolve_amp("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="not a device"):
        Compute.resolve("gpu0")
    assert worker_devices("cuda:0,cuda:1", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cpu", 2) == ["cpu", "cpu"]


@pytest.mark.parametrize("n,size", [(10, 2), (10, 3), (7, 4)])
def test_each_rank_takes_distributed_samplers_shard(n, size):
    """The shard of an epoch is exactly torch's ``DistributedSampler``'s: one shuffled order, padded, strided."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    for rank in range(size):
        expected = list(DistributedSampler(range(n), num_replicas=size, rank=rank, shuffle=True, seed=5))
        assert World(rank, size).shard(n, order).tolist() == expected


def test_ranks_share_the_global_batch_and_see_every_sample():
    split = load_data("synthetic:100", (1, 4, 4)).train  # 75 training samples
    seen, steps = [], set()
    for rank in range(3):
        batches = list(split.batches(30, shuffle=True, seed=1, world=World(rank, 3)))
        steps.add(len(batches))
        assert all(len(y) <= 10 for _, y in batches)  # 30 / 3 per process
        seen += [tuple(x[i].flatten().tolist()) for x, _ in batches for i in range(len(x))]
    assert len(steps) == 1  # every rank steps the same number of times (DDP would hang otherwise)
    assert len(set(seen)) == len(split)


def test_a_search_fine_tunes_its_winner_in_n_processes_through_the_finetune_command(trained, tmp_path):
    weights, _ = trained
    r = autoprune(
        "search", "--model", MODEL, "--weights", weights, "--data", "synthetic", "--input-shape", "8x3x16x16",
        "--strategy", "uniform", "--budget", "flops=50%", "--finetune-epochs", "2", "--no-measure",
        "--device", "cpu", "--nproc", "2", "--out", tmp_path / "run",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["search"]["finetune"]["nproc"] == 2
    m = policy["metrics"]
    assert m["test_accuracy"] > m["test_accuracy_before_finetune"]
    assert not list(tmp_path.glob("run/*.checkpoint.pt"))  # the fine-tune's files stayed in its temporary directory


def test_a_search_under_torchrun_is_one_line(run_cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli("search", "--budget", "flops=50%", "--strategy", "uniform", "--no-measure")
    assert code == 2 and err.count("\n") == 1 and "--nproc N" in err
