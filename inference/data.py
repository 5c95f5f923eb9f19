"""Datasets decoded once into in-memory uint8 tensors, batched and augmented as tensors.

Specs: ``digits`` (scikit-learn's 8x8 digits, built in), ``cifar10`` (torchvision; ``download``
for users with internet), ``imagefolder:PATH`` (``PATH/train/<class>/*`` and
``PATH/test/<class>/*``, e.g. the shared CIFAR-10 tree).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_CHOICES = "digits, cifar10, imagefolder:PATH"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ImageData:
    """Train and test images (uint8, N x C x H x W) with labels, classes and augmentation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    pad: int  # random-crop padding
    flip: bool  # random horizontal flips

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images in [0, 1]."""
        x = self.train_x.double().div_(255).transpose(0, 1).flatten(1)
        return x.mean(1).tolist(), x.std(1).tolist()


def check_data_spec(spec: str) -> str:
    """Return ``spec`` if well-formed, else raise a ValueError listing the choices."""
    if spec in ("digits", "cifar10") or (spec.startswith("imagefolder:") and len(spec) > 12):
        return spec
    raise ValueError(f"unknown data {spec!r}; choose one of: {DATA_CHOICES}")


def load_data(
    spec: str,
    train_subset: int | None = None,
    root: str | None = None,
    download: bool = False,
) -> ImageData:
    """Load the dataset ``spec``; ``train_subset=K`` keeps the first K/C items of each class."""
    check_data_spec(spec)
    if spec.startswith("imagefolder:"):
        return _imagefolder(Path(spec.split(":", 1)[1]), train_subset)
    data = _digits() if spec == "digits" else _cifar10(root, download)
    if train_subset is not None:
        data.train_x, data.train_y = _balanced_subset(data.train_x, data.train_y, train_subset,
                                                      data.num_classes)
    return data


def _per_class(train_subset: int, num_classes: int) -> int:
    if train_subset < num_classes:
        raise ValueError(f"--train-subset {train_subset} must be at least the number of "
                         f"classes ({num_classes})")
    return train_subset // num_classes


def _balanced_subset(x: torch.Tensor, y: torch.Tensor, k: int, num_classes: int):
    per_class = _per_class(k, num_classes)
    keep = []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"--train-subset {k}: class {c} has only {len(idx)} training items, "
                             f"{per_class} needed")
        keep.append(idx[:per_class])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep]


def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy((digits.images * 255.0 / 16.0).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.25,
                                           random_state=0, stratify=digits.target)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    return ImageData(images[idx_train], labels[idx_train], images[idx_test], labels[idx_test],
                     [str(c) for c in range(10)], pad=1, flip=False)


def default_cifar_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "pyro-implicit", "cifar10")


def _cifar10(root: str | None, download: bool) -> ImageData:
    from torchvision.datasets import CIFAR10

    root = root or default_cifar_root()
    try:
        train = CIFAR10(root, train=True, download=download)
        test = CIFAR10(root, train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: pass --download (needs internet), point "
            "--data-root at a folder holding cifar-10-batches-py, or use "
            "--data imagefolder:PATH with train/ and test/ class folders"
        ) from err

    def to_tensor(ds):
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(ds.targets, dtype=torch.long))

    (train_x, train_y), (test_x, test_y) = to_tensor(train), to_tensor(test)
    return ImageData(train_x, train_y, test_x, test_y, list(train.classes), pad=4, flip=True)


def _list_split(root: Path, split: str, classes: list[str] | None) -> dict[str, list[Path]]:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {root} has no {split}/ folder: expected "
                                f"{root}/train/<class>/* and {root}/test/<class>/*")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise FileNotFoundError(f"{folder} has no class folders")
    if classes is not None and found != classes:
        raise ValueError(f"{folder} has classes {found}, but train/ has {classes}")
    files = {c: sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
             for c in found}
    for c, paths in files.items():
        if not paths:
            raise FileNotFoundError(f"class folder {folder / c} has no images")
    return files


def _decode(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode_all(files: dict[str, list[Path]]) -> tuple[torch.Tensor, torch.Tensor]:
    paths = [p for c in files for p in files[c]]
    labels = torch.tensor([i for i, c in enumerate(files) for _ in files[c]], dtype=torch.long)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(_decode, paths))
    shape = images[0].shape
    for path, img in zip(paths, images, strict=True):
        if img.shape != shape:
            raise ValueError(f"image {path} has shape {tuple(img.shape)}, expected "
                             f"{tuple(shape)} like {paths[0]}")
    return torch.stack(images), labels


def _imagefolder(root: Path, train_subset: int | None) -> ImageData:
    train_files = _list_split(root, "train", None)
    classes = list(train_files)
    test_files = _list_split(root, "test", classes)
    if train_subset is not None:
        per_class = _per_class(train_subset, len(classes))
        for c, paths in train_files.items():
            if len(paths) < per_class:
                raise ValueError(f"--train-subset {train_subset}: {root}/train/{c} has only "
                                 f"{len(paths)} images, {per_class} needed")
            train_files[c] = paths[:per_class]
    train_x, train_y = _decode_all(train_files)
    test_x, test_y = _decode_all(test_files)
    if test_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"test images are {tuple(test_x.shape[1:])}, train images "
                         f"{tuple(train_x.shape[1:])}")
    return ImageData(train_x, train_y, test_x, test_y, classes, pad=train_x.shape[-1] // 8,
                     flip=True)


class Normalizer:
    """uint8 batches -> normalised float batches, with optional pad-crop and flip augmentation."""

    def __init__(self, mean: list[float], std: list[float], pad: int = 0, flip: bool = False,
                 device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.pad, self.flip, self.device = pad, flip, torch.device(device)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalise ``x``; augment when a ``generator`` is given (training batches)."""
        x = x.to(self.device)
        if generator is not None:
            x = self.augment(x, generator)
        return (x.float() - self.mean) / self.std

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.pad:
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            off = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator).to(x.device)
            rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]
            cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]
            x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None],
                                           rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            mask = (torch.rand(b, generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(mask, x.flip(-1), x)
        return x


def batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int,
            generator: torch.Generator | None = None) -> Iterator:
    """Mini-batches of (x, y) (or x alone when ``y`` is None), shuffled with ``generator``."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        yield x[idx] if y is None else (x[idx], y[idx])
