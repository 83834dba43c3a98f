"""Generate an ImageNet-style folder (``OUT/{train,val}/CLASS/*.jpg``) for throughput benchmarks and the GPU check.

Each class is a smooth random colour field (a few low-frequency waves) plus per-image noise, random shifts and
scale, saved as JPEG: learnable, decoded and transformed like real photos (``imagefolder:OUT``), and made without a
download.

    .venv/bin/python scripts/make_imagefolder.py /tmp/imagefolder --classes 10 --train-per-class 50 --val-per-class 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def class_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A class's smooth colour pattern (size x size x 3 in [0, 1]), twice the image side so crops can shift it."""
    y, x = np.mgrid[0 : 2 * size, 0 : 2 * size] / size
    field = np.zeros((2 * size, 2 * size, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
            field[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def write_split(out: Path, fields: list[np.ndarray], per_class: int, size: int, rng: np.random.Generator) -> None:
    for k, field in enumerate(fields):
        d = out / f"class{k:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            oy, ox = rng.integers(0, size, 2)
            img = field[oy : oy + size, ox : ox + size] + rng.normal(0, 0.08, (size, size, 3))
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=50)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256, cropped to 224)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    fields = [class_field(rng, a.size) for _ in range(a.classes)]
    write_split(a.out / "train", fields, a.train_per_class, a.size, rng)
    write_split(a.out / "val", fields, a.val_per_class, a.size, rng)
    n = a.classes * (a.train_per_class + a.val_per_class)
    print(f"{n} images of {a.size}x{a.size} in {a.classes} classes -> {a.out}/train, {a.out}/val")


if __name__ == "__main__":
    main()
