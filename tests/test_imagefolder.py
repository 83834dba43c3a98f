"""``imagefolder:``: ImageNet-style transforms for the model's input, the model's normalisation, a held-out cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.data import IMAGENET_STATS, load_data
from autoprune.errors import UserError
from autoprune.models import input_normalisation


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ of 3 classes, 48x40 JPEGs (larger than the 32x32 crop, not square)."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 4)):
        for k in range(3):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg")
    return root


def test_training_batches_are_random_crops_and_evaluation_is_the_centre(folder):
    bundle = load_data(f"imagefolder:{folder}", (3, 32, 32), held_out=12, seed=0)
    assert (len(bundle.train), len(bundle.held_out), len(bundle.test), bundle.num_classes) == (48, 12, 12, 3)
    first = next(bundle.held_out.batches(12))[0]
    again = next(bundle.held_out.batches(12))[0]
    assert first.shape == (12, 3, 32, 32) and torch.equal(first, again)  # evaluation: resize + centre crop
    a = next(bundle.train.batches(8, augment=True, seed=1))[0]
    b = next(bundle.train.batches(8, augment=True, seed=1))[0]
    c = next(bundle.train.batches(8, augment=True, seed=2))[0]
    plain = next(bundle.train.batches(8))[0]
    assert a.shape == (8, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)  # random resized crops and flips, a function of the seed
    assert not torch.equal(a, plain)


def test_the_held_out_cap_is_deterministic_given_the_seed(folder):
    pick = [load_data(f"imagefolder:{folder}", (3, 32, 32), held_out=9, seed=s).held_out.indices for s in (0, 0, 1)]
    assert pick[0] == pick[1] and pick[0] != pick[2] and len(pick[0]) == 9
    with pytest.raises(UserError, match="--held-out 60 leaves no training images"):
        load_data(f"imagefolder:{folder}", (3, 32, 32), held_out=60)


def test_images_are_normalised_with_the_models_statistics(folder):
    assert input_normalisation("resnet18") == IMAGENET_STATS  # torchvision's weights' metadata
    assert input_normalisation("fmnist-resnet20") == IMAGENET_STATS
    shifted = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    raw = next(load_data(f"imagefolder:{folder}", (3, 32, 32), stats=shifted).test.batches(4))[0]
    assert raw.min() >= 0.0 and raw.max() <= 1.0  # ToTensor's [0, 1], not shifted
    gray = next(load_data(f"imagefolder:{folder}", (1, 32, 32)).test.batches(4))[0]
    assert gray.shape == (4, 1, 32, 32)  # a 1-channel model gets grayscale images
