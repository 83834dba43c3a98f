"""Dataset registry and the held-out split.

A dataset is named by a string: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder:PATH`` or
``synthetic``. Each resolves to a :class:`DataBundle` with three splits:

* ``train``: what fine-tuning and BatchNorm recalibration use;
* ``held_out``: carved deterministically from the *training* data; search rewards are measured on it, so the test
  split is never looked at while choosing a policy;
* ``test``: the dataset's own test split, reported once at the end.

Small datasets live in memory as uint8 tensors and are normalised per batch: evaluating 5,000 Fashion-MNIST images
then costs only the model's forward passes.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoprune.distributed import SINGLE, World
from autoprune.errors import UserError

FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
CACHE_DIR = Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH", "synthetic")

Batch = tuple[torch.Tensor, torch.Tensor]


class Split:
    """A sequence of labelled images that yields normalised float batches."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, world: World = SINGLE
    ) -> Iterator[Batch]:
        """Normalised batches in order (or shuffled by ``seed``); with ``world``, this rank's shard of them."""
        raise NotImplementedError

    def subset(self, n: int) -> Split:
        """The first ``n`` samples (deterministic): smaller evaluations for tests and fast rewards."""
        raise NotImplementedError

    def to(self, device: torch.device, *, loader_workers: int = 0) -> Split:
        """The same samples served on ``device``: in-memory images move there once; images read from disk keep
        their loader, with ``loader_workers`` decoding processes and pinned memory for a GPU."""
        raise NotImplementedError


def epoch_order(
    n: int, batch_size: int, shuffle: bool, gen: torch.Generator, world: World
) -> tuple[torch.Tensor | None, int]:
    """The sample order of one pass (None: 0..n-1) and its per-process batch: shuffled by ``gen`` (seeded alike on
    every rank), then this rank's shard of it with ``batch_size / world.size`` samples a step."""
    order = torch.randperm(n, generator=gen) if shuffle else None
    if not world.distributed:
        return order, batch_size
    return world.shard(n, order), max(1, batch_size // world.size)


class TensorSplit(Split):
    """Images held in memory as uint8 NCHW, normalised per batch with per-channel mean and std."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple, std: tuple) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> TensorSplit:
        return self._with(self.images[:n], self.labels[:n], self.mean, self.std)

    def to(self, device: torch.device, *, loader_workers: int = 0) -> TensorSplit:
        if self.images.device == torch.device(device):
            return self
        return self._with(*(t.to(device) for t in (self.images, self.labels, self.mean, self.std)))

    @staticmethod
    def _with(images, labels, mean, std) -> TensorSplit:
        sub = TensorSplit.__new__(TensorSplit)
        sub.images, sub.labels, sub.mean, sub.std = images, labels, mean, std
        return sub

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, world: World = SINGLE
    ) -> Iterator[Batch]:
        n = len(self)
        gen = torch.Generator().manual_seed(seed)  # the order: the same on every rank
        order, batch_size = epoch_order(n, batch_size, shuffle, gen, world)
        if world.rank > 0:  # each rank's own crops and flips
            gen = torch.Generator().manual_seed(seed * 7919 + world.rank)
        if order is not None:
            order = order.to(self.images.device)
        for start in range(0, n if order is None else len(order), batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            x, y = self.images[idx], self.labels[idx]
            if augment:
                x = _random_crop_flip(x, gen)
            yield self._normalise(x), y


def _random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Standard small-image augmentation: pad-and-crop by up to ``pad`` pixels, horizontal flip (the random draws
    on the CPU's generator, the indexing where the images are)."""
    n, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w)
    channels = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
    out = padded[torch.arange(n, device=dev).view(n, 1, 1, 1), channels, rows, cols]
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
    out[flip] = out[flip].flip(-1)
    return out


class FolderSplit(Split):
    """Images read from disk through torchvision (``imagefolder:PATH``), decoded by a ``DataLoader``.

    ``train_ds`` and ``eval_ds`` are the same files under the two standard transforms (:func:`folder_transforms`):
    batches with ``augment`` use the training one (random resized crop and flip), the others the evaluation one
    (resize and centre crop), so the held-out split carved from the training folder is scored like a test set.
    """

    def __init__(
        self, train_ds, eval_ds, indices: list[int], *, device: torch.device | None = None, num_workers: int = 0
    ) -> None:
        self.train_ds, self.eval_ds, self.indices = train_ds, eval_ds, indices
        self.device, self.num_workers = device or torch.device("cpu"), num_workers

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, n: int) -> FolderSplit:
        return FolderSplit(
            self.train_ds, self.eval_ds, self.indices[:n], device=self.device, num_workers=self.num_workers
        )

    def to(self, device: torch.device, *, loader_workers: int = 0) -> FolderSplit:
        return FolderSplit(
            self.train_ds, self.eval_ds, self.indices, device=torch.device(device), num_workers=loader_workers
        )

    def batches(
        self, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0, world: World = SINGLE
    ) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        gen = torch.Generator().manual_seed(seed)
        order, batch_size = epoch_order(len(self.indices), batch_size, shuffle, gen, world)
        indices = self.indices if order is None else [self.indices[i] for i in order.tolist()]
        pin = self.device.type == "cuda"
        samples = _SeededSamples(self.train_ds if augment else self.eval_ds, indices, seed * 7919 + world.rank)
        loader = DataLoader(samples, batch_size=batch_size, num_workers=self.num_workers, pin_memory=pin)
        for x, y in loader:
            yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)


class _SeededSamples:
    """``dataset[indices[i]]`` with the random transforms seeded by (seed, i): the crops and flips of an epoch are
    a function of the seed, whatever the number of loader workers, and leave the global RNG as it was."""

    def __init__(self, dataset, indices: list[int], seed: int) -> None:
        self.dataset, self.indices, self.seed = dataset, indices, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.dataset[self.indices[i]]


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def folder_transforms(image_shape: tuple[int, int, int], stats: tuple[tuple, tuple] = IMAGENET_STATS):
    """The standard ImageNet-style pipelines for a C x H x W input: training = ``RandomResizedCrop`` to H x W and a
    horizontal flip; evaluation = resize the short side to 256/224 of the crop, then ``CenterCrop``. A 1-channel
    model gets grayscale images. ``stats`` is the model's per-channel normalisation."""
    from torchvision import transforms

    c, h, w = image_shape
    mean, std = stats
    if len(mean) != c:
        mean, std = (tuple(mean)[:1] * c, tuple(std)[:1] * c) if c != 3 else IMAGENET_STATS
    gray = [transforms.Grayscale(c)] if c != 3 else []
    tail = [*gray, transforms.ToTensor(), transforms.Normalize(mean, std)]
    train = transforms.Compose([transforms.RandomResizedCrop((h, w)), transforms.RandomHorizontalFlip(), *tail])
    evaluation = transforms.Compose(
        [transforms.Resize(int(round(max(h, w) * 256 / 224))), transforms.CenterCrop((h, w)), *tail]
    )
    return train, evaluation


@dataclass
class DataBundle:
    name: str
    train: Split
    held_out: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, int, int]  # C, H, W

    def to(self, device: torch.device, *, loader_workers: int = 0) -> DataBundle:
        """The bundle served on ``device`` (see :meth:`Split.to`): moved once, not per batch."""
        train, held_out, test = (
            s.to(device, loader_workers=loader_workers) for s in (self.train, self.held_out, self.test)
        )
        return DataBundle(self.name, train, held_out, test, self.num_classes, self.image_shape)


def held_out_indices(n: int, held_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, held-out) index split of ``n`` training samples."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[held_out:].sort().values, perm[:held_out].sort().values


def default_held_out_size(n_train: int) -> int:
    return 5000 if n_train >= 50_000 else max(1, n_train // 10)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path} is not an IDX file: reinstall the dataset")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise UserError(f"{path} is truncated ({len(data) - offset} of {expected} bytes): reinstall the dataset")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_fashion_mnist() -> Path:
    candidates = [*FASHION_MNIST_DIRS, CACHE_DIR / "FashionMNIST" / "raw"]
    if env := os.environ.get("AUTOPRUNE_FASHION_MNIST"):
        candidates.insert(0, Path(env))
    for d in candidates:
        if any((d / f"train-images-idx3-ubyte{ext}").is_file() for ext in (".gz", "")):
            return d
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(CACHE_DIR), train=True, download=True)
        FashionMNIST(str(CACHE_DIR), train=False, download=True)
    except Exception as e:  # no network, mirror down, ...
        raise UserError(
            "Fashion-MNIST not found: install Debian's dataset-fashion-mnist (apt-get install "
            f"dataset-fashion-mnist) or allow torchvision's download ({type(e).__name__})"
        ) from e
    return CACHE_DIR / "FashionMNIST" / "raw"


def _idx(d: Path, stem: str) -> np.ndarray:
    gz = d / f"{stem}.gz"
    return _read_idx(gz if gz.is_file() else d / stem)


def load_fashion_mnist(held_out: int | None = None, seed: int = 0) -> DataBundle:
    d = _find_fashion_mnist()
    xtr = torch.from_numpy(_idx(d, "train-images-idx3-ubyte").copy()).unsqueeze(1)
    ytr = torch.from_numpy(_idx(d, "train-labels-idx1-ubyte").copy())
    xte = torch.from_numpy(_idx(d, "t10k-images-idx3-ubyte").copy()).unsqueeze(1)
    yte = torch.from_numpy(_idx(d, "t10k-labels-idx1-ubyte").copy())
    stats = ((0.2860,), (0.3530,))
    return _bundle_from_tensors("fashion-mnist", xtr, ytr, xte, yte, 10, stats, held_out, seed)


def _bundle_from_tensors(name, xtr, ytr, xte, yte, num_classes, stats, held_out, seed) -> DataBundle:
    n_held = default_held_out_size(len(ytr)) if held_out is None else held_out
    tr, ho = held_out_indices(len(ytr), n_held, seed)
    mean, std = stats
    return DataBundle(
        name,
        TensorSplit(xtr[tr], ytr[tr], mean, std),
        TensorSplit(xtr[ho], ytr[ho], mean, std),
        TensorSplit(xte, yte, mean, std),
        num_classes,
        tuple(xtr.shape[1:]),
    )


def load_cifar(which: str, held_out: int | None = None, seed: int = 0) -> DataBundle:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, n_classes = (CIFAR10, 10) if which == "cifar10" else (CIFAR100, 100)
    try:
        train = cls(str(CACHE_DIR), train=True, download=True)
        test = cls(str(CACHE_DIR), train=False, download=True)
    except Exception as e:
        raise UserError(
            f"{which} is not in {CACHE_DIR} and could not be downloaded ({type(e).__name__}): "
            f"place the extracted archive there or set AUTOPRUNE_CACHE"
        ) from e

    def as_tensors(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    xtr, ytr = as_tensors(train)
    xte, yte = as_tensors(test)
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return _bundle_from_tensors(which, xtr, ytr, xte, yte, n_classes, stats, held_out, seed)


def load_imagefolder(
    path: str,
    image_shape: tuple[int, int, int],
    held_out: int | None,
    seed: int,
    stats: tuple[tuple, tuple] = IMAGENET_STATS,
) -> DataBundle:
    """``PATH/{train,val|test}/CLASS/*.jpg``, or one ``PATH/CLASS/*.jpg`` tree split three ways.

    The held-out split is carved from the training images (``held_out`` of them, deterministic given ``seed``; AMC
    scores a policy on 3,000) and evaluated with the evaluation transform, like the test split.
    """
    from torchvision import datasets

    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {str(root)!r} does not exist: pass imagefolder:PATH to a class-per-folder tree")
    train_tf, eval_tf = folder_transforms(image_shape, stats)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    try:
        if (root / "train").is_dir() and test_dir is not None:
            train_ds, train_eval = (datasets.ImageFolder(str(root / "train"), tf) for tf in (train_tf, eval_tf))
            test_ds = datasets.ImageFolder(str(test_dir), eval_tf)
            n_held = default_held_out_size(len(train_ds)) if held_out is None else held_out
            _check_held_out(n_held, len(train_ds), root)
            tr, ho = held_out_indices(len(train_ds), n_held, seed)
            splits = (
                FolderSplit(train_ds, train_eval, tr.tolist()),
                FolderSplit(train_ds, train_eval, ho.tolist()),
                FolderSplit(test_ds, test_ds, list(range(len(test_ds)))),
            )
            n_classes = len(train_ds.classes)
        else:
            ds, ds_eval = (datasets.ImageFolder(str(root), tf) for tf in (train_tf, eval_tf))
            perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
            n_test = max(1, len(ds) // 5)
            n_held = max(1, len(ds) // 10) if held_out is None else held_out
            _check_held_out(n_held, len(ds) - n_test, root)
            splits = (
                FolderSplit(ds, ds_eval, sorted(perm[n_test + n_held :])),
                FolderSplit(ds, ds_eval, sorted(perm[n_test : n_test + n_held])),
                FolderSplit(ds, ds_eval, sorted(perm[:n_test])),
            )
            n_classes = len(ds.classes)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"cannot read image folder {root}: {e}") from e
    return DataBundle(f"imagefolder:{path}", *splits, n_classes, image_shape)


def _check_held_out(n_held: int, n_train: int, root: Path) -> None:
    if not 1 <= n_held < n_train:
        raise UserError(
            f"--held-out {n_held} leaves no training images in {root} ({n_train} available): pass a smaller --held-out"
        )


def make_synthetic(
    image_shape: tuple[int, int, int],
    num_classes: int = 10,
    n_train: int = 512,
    n_test: int = 256,
    held_out: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """A learnable synthetic task: each class is a fixed random pattern plus noise (for tests and smoke runs)."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = image_shape
    prototypes = torch.rand(num_classes, c, h, w, generator=gen) * 255

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=gen)
        noise = torch.randn(n, c, h, w, generator=gen) * 60
        return (prototypes[y] + noise).clamp(0, 255).to(torch.uint8), y

    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    stats = ((0.5,) * c, (0.29,) * c)
    n_held = max(1, n_train // 4) if held_out is None else held_out
    return _bundle_from_tensors("synthetic", xtr, ytr, xte, yte, num_classes, stats, n_held, seed)


def load_data(
    spec: str,
    image_shape: tuple[int, int, int] | None = None,
    *,
    num_classes: int = 10,
    held_out: int | None = None,
    seed: int = 0,
    stats: tuple[tuple, tuple] = IMAGENET_STATS,
) -> DataBundle:
    """Resolve a dataset name. ``image_shape`` (C, H, W) is needed for ``imagefolder`` and ``synthetic``;
    ``stats`` (per-channel mean and std, the model's) normalises an ``imagefolder``."""
    if spec == "fashion-mnist":
        return load_fashion_mnist(held_out, seed)
    if spec in ("cifar10", "cifar100"):
        return load_cifar(spec, held_out, seed)
    if spec.startswith("imagefolder:"):
        return load_imagefolder(spec.partition(":")[2], image_shape or (3, 224, 224), held_out, seed, stats)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        n = int(spec.partition(":")[2] or 512)
        return make_synthetic(image_shape or (3, 32, 32), num_classes, n_train=n, held_out=held_out, seed=seed)
    raise UserError(f"unknown dataset {spec!r}: use one of {', '.join(DATASETS)}")


def check_compatible(data: DataBundle, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Fail early when the data cannot feed the model."""
    if tuple(data.image_shape) != tuple(input_shape[1:]):
        shape = "x".join(map(str, data.image_shape))
        raise UserError(
            f"dataset {data.name} has images of {shape} but the model takes "
            f"{'x'.join(map(str, input_shape[1:]))}: pass --input-shape Nx{shape}"
        )
    if data.num_classes > num_classes:
        raise UserError(
            f"dataset {data.name} has {data.num_classes} classes but the model outputs {num_classes}: "
            f"build the model with --num-classes {data.num_classes}"
        )
