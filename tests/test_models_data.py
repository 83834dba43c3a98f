import gzip
import struct

import numpy as np
import pytest
import torch

from autoprune.data import _read_idx, check_compatible, held_out_indices, load_data, make_synthetic
from autoprune.errors import UserError
from autoprune.models import build_model, load_weights, resolve


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnets(depth):
    model, spec = build_model(f"resnet{depth}", in_channels=1, num_classes=7)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert spec.input_shape == (1, 1, 32, 32)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert n_convs == depth - 1 + 2  # 6n+1 convs + 2 projection shortcuts


def test_torchvision_by_name():
    model, spec = build_model("mobilenet_v3_small", num_classes=5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert spec.input_shape == (1, 3, 224, 224)


def user_factory():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))


def test_user_factory():
    model, _ = build_model("tests.test_models_data:user_factory")
    assert isinstance(model, torch.nn.Sequential)
    with pytest.raises(UserError, match="cannot import"):
        build_model("tests.nope:factory")


def test_state_dict_round_trip(tmp_path):
    a, _ = build_model("resnet20")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b, _ = build_model("resnet20", tmp_path / "w.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c, _ = build_model("resnet32")
    with pytest.raises(UserError, match="do not fit"):
        load_weights(c, tmp_path / "w.pt")


def test_unknown_names():
    with pytest.raises(UserError, match="unknown model"):
        resolve("nonet")
    with pytest.raises(UserError, match="unknown dataset"):
        load_data("mnist-ish")


def test_held_out_split_is_disjoint_and_deterministic():
    tr, ho = held_out_indices(1000, 100, seed=3)
    tr2, ho2 = held_out_indices(1000, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(ho, ho2)
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0 and len(tr) + len(ho) == 1000


def test_synthetic_is_learnable_shape():
    d = make_synthetic((3, 8, 8), num_classes=4, n_train=64, n_test=32, held_out=16)
    assert (len(d.train), len(d.held_out), len(d.test)) == (48, 16, 32)
    x, y = next(d.train.batches(10, shuffle=True, augment=True))
    assert x.shape == (10, 3, 8, 8) and x.dtype == torch.float32 and y.max() < 4
    check_compatible(d, (1, 3, 8, 8), 4)
    with pytest.raises(UserError, match="--input-shape"):
        check_compatible(d, (1, 3, 16, 16), 4)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(_read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(UserError, match="truncated"):
        _read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for stem, shape in [("train-images-idx3-ubyte", (120, 28, 28)), ("t10k-images-idx3-ubyte", (30, 28, 28))]:
        write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 255, shape))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 120))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 30))
    monkeypatch.setenv("AUTOPRUNE_FASHION_MNIST", str(tmp_path))
    d = load_data("fashion-mnist")
    assert (len(d.train), len(d.held_out), len(d.test)) == (108, 12, 30)
    assert d.image_shape == (1, 28, 28) and d.num_classes == 10


def test_the_compact_model_is_a_mobilenet_v2_for_28x28_that_prunes():
    """fmnist-mobilenetv2: inverted residuals with depthwise convolutions on a 1x28x28 input; its depthwise couplings
    are groups of their own kind, and a pruned copy is a smaller dense network that still runs."""
    from autoprune.layers import analyze
    from autoprune.prune import ChannelPruner

    net, spec = build_model("fmnist-mobilenetv2", use_default_weights=False)
    assert spec.input_shape == (1, 1, 28, 28) and net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    graph = analyze(net, spec.input_shape, "fmnist-mobilenetv2")
    assert any(g.kind == "depthwise" for g in graph.groups)
    pruner = ChannelPruner(net, spec.input_shape, graph=graph, model_name="fmnist-mobilenetv2")
    half = [max(1, c // 2) for c in graph.channels]
    pruned = pruner.apply(half)
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in net.parameters())
