"""Datasets decoded once into in-memory uint8 tensors, batched and augmented as tensors.

Specs: ``digits`` (scikit-learn's 8x8 digits, built in), ``cifar10`` and ``svhn`` (torchvision;
``download`` for users with internet; SVHN's train split, no augmentation), ``imagefolder:PATH``
(``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, e.g. the shared CIFAR-10 tree), and
``imagenet:PATH`` (``PATH/train/<class>/*``, ``PATH/val/<class>/*``), which is not decoded into
memory but per batch by DataLoader workers (:mod:`.folders`), and ``cifar10c:PATH`` (a published
CIFAR-10-C ``NAME.npy`` next to its ``labels.npy``: a test split only, all five severities).

Augmentation (``ImageData.augment``): ``pad-crop`` (CIFAR style: random crop of the zero-padded
image, optional flip) for small images; ``imagenet`` for large ones: training images are decoded
resized to shorter side 256 and center-cropped to 256x256, then each batch gets a random-resized
crop to 224 (scale (0.08, 1), ratio (3/4, 4/3)) and a flip; test images are decoded as the
standard resize-256 + center-crop-224, and un-augmented training batches are center-cropped to
224 the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .folders import load_imagenet
from .images import (
    IMAGENET_CROP,
    IMAGENET_RESIZE,
    ImageData,
    decode_all,
    first_per_class,
    image_size,
    items_per_class,
    list_split,
    random_resized_crop,
)

DATA_CHOICES = "digits, cifar10, svhn, imagefolder:PATH, imagenet:PATH, cifar10c:PATH"
AUGMENT_CHOICES = ("auto", "pad-crop", "imagenet")
AUTO_IMAGENET_ABOVE = 64  # "auto" picks imagenet for images whose shorter side exceeds this
PATH_SPECS = ("imagefolder:", "imagenet:", "cifar10c:")  # spec prefixes followed by a PATH
MEMORY = "memory"  # a run's data handed to fit in memory: it cannot be loaded, only handed again


def check_data_spec(spec: str) -> str:
    """Return ``spec`` if well-formed, else raise a ValueError listing the choices."""
    if spec in ("digits", "cifar10", "svhn", MEMORY) or any(
            spec.startswith(kind) and len(spec) > len(kind) for kind in PATH_SPECS):
        return spec
    raise ValueError(f"unknown data {spec!r}; choose one of: {DATA_CHOICES}")


def check_augment(augment: str) -> str:
    """Return ``augment`` if it is a valid choice, else raise a ValueError listing the choices."""
    if augment in AUGMENT_CHOICES:
        return augment
    raise ValueError(f"unknown augment {augment!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")


def load_data(
    spec: str,
    train_subset: int | None = None,
    root: str | None = None,
    download: bool = False,
    augment: str = "auto",
) -> ImageData:
    """Load the dataset ``spec``; ``train_subset=K`` keeps the first K/C items of each class.

    ``augment``: ``pad-crop``, ``imagenet`` (``imagefolder:`` data only) or ``auto``
    (``imagenet`` for an image folder whose first training image has a shorter side above 64 px,
    else ``pad-crop``).
    """
    check_data_spec(spec)
    if spec == MEMORY:
        raise ValueError("this run was trained on data handed to fit(..., data=...) in memory, "
                         "which cannot be loaded again: pass the same data (load_run(RUN, "
                         "data=...), evaluate(run, test=...))")
    data = _load(spec, train_subset, root, download, augment)
    data.spec = spec
    return data


def _load(spec: str, train_subset: int | None, root: str | None, download: bool,
          augment: str) -> ImageData:
    check_augment(augment)
    if spec.startswith("imagenet:"):  # lazy: decoded per batch (see .folders)
        return load_imagenet(Path(spec.split(":", 1)[1]), train_subset)
    if spec.startswith("imagefolder:"):
        return _imagefolder(Path(spec.split(":", 1)[1]), train_subset, augment)
    if spec.startswith("cifar10c:"):
        return _cifar10c(Path(spec.split(":", 1)[1]))
    if augment == "imagenet":
        raise ValueError(f"augment 'imagenet' is for imagefolder: data with large images, not "
                         f"{spec!r}; use 'pad-crop' or 'auto'")
    data = _digits() if spec == "digits" else (_svhn if spec == "svhn" else _cifar10)(
        root, download)
    if train_subset is not None:
        data.train_x, data.train_y = _balanced_subset(data.train_x, data.train_y, train_subset,
                                                      data.num_classes)
    return data


def _balanced_subset(x: torch.Tensor, y: torch.Tensor, k: int, num_classes: int):
    per_class = items_per_class(k, num_classes)
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


def _svhn(root: str | None, download: bool) -> ImageData:
    """SVHN's ``train`` split (73,257 images; not ``extra``) and ``test`` split (26,032), without
    augmentation (WideResNet's SVHN recipe)."""
    from torchvision.datasets import SVHN

    root = root or os.path.join(os.path.expanduser("~"), ".cache", "pyro-implicit", "svhn")
    try:
        train = SVHN(root, split="train", download=download)
        test = SVHN(root, split="test", download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"SVHN not found under {root}: pass --download (needs internet), or point "
            "--data-root at a folder holding train_32x32.mat and test_32x32.mat") from err

    def to_tensor(ds):  # torchvision keeps SVHN as N x C x H x W, label 10 mapped to 0
        return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long()

    (train_x, train_y), (test_x, test_y) = to_tensor(train), to_tensor(test)
    return ImageData(train_x, train_y, test_x, test_y, [str(c) for c in range(10)], pad=0,
                     flip=False)


def _cifar10c(path: Path) -> ImageData:
    """A published CIFAR-10-C file as evaluation data: no training split, its test split every
    image of ``path`` (severities 1..5 stacked) with the labels of ``labels.npy``."""
    from .shift import CIFAR10_CLASSES, load_cifar10c_file

    test_x, test_y = load_cifar10c_file(path)
    empty = torch.zeros((0, *test_x.shape[1:]), dtype=torch.uint8)
    return ImageData(empty, torch.zeros(0, dtype=torch.long), test_x, test_y,
                     list(CIFAR10_CLASSES), pad=4, flip=True)


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; a host tensor bound for a GPU goes through pinned memory without
    blocking, so the copy does not synchronise the host with the device."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _imagefolder(root: Path, train_subset: int | None, augment: str) -> ImageData:
    train_files = list_split(root, "train", None)
    classes = list(train_files)
    test_files = list_split(root, "test", classes)
    if train_subset is not None:
        train_files = first_per_class(train_files, train_subset, root)
    if augment == "auto":
        first = next(iter(train_files.values()))[0]
        augment = "imagenet" if min(image_size(first)) > AUTO_IMAGENET_ABOVE else "pad-crop"
    if augment == "imagenet":
        train_x, train_y = decode_all(train_files, IMAGENET_RESIZE)
        test_x, test_y = decode_all(test_files, IMAGENET_CROP)
        return ImageData(train_x, train_y, test_x, test_y, classes, pad=0, flip=True,
                         augment="imagenet")
    train_x, train_y = decode_all(train_files)
    test_x, test_y = decode_all(test_files)
    if test_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"test images are {tuple(test_x.shape[1:])}, train images "
                         f"{tuple(train_x.shape[1:])}")
    return ImageData(train_x, train_y, test_x, test_y, classes, pad=train_x.shape[-1] // 8,
                     flip=True)


def imagefolder_holdout(spec: str, per_class: int,
                        train_subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A validation split of an ``imagefolder:PATH`` (small images): the last ``per_class``
    training files of each class, decoded, as (images, labels). Refused when it would overlap
    the class-balanced ``train_subset`` (the first files of each class)."""
    if not spec.startswith("imagefolder:"):
        raise ValueError(f"a held-out split is carved from imagefolder:PATH data, not {spec!r}")
    if train_subset is None:
        raise ValueError("a held-out split needs a train_subset: the whole training split is "
                         "the training data")
    root = Path(spec.split(":", 1)[1])
    files = list_split(root, "train", None)
    first = items_per_class(train_subset, len(files))
    for c, paths in files.items():
        if len(paths) < first + per_class:
            raise ValueError(f"{root}/train/{c} has {len(paths)} images: too few for "
                             f"{first} training and {per_class} held-out ones")
    return decode_all({c: paths[-per_class:] for c, paths in files.items()})


class Normalizer:
    """uint8 batches -> normalised float batches, with optional augmentation: ``pad-crop``
    (pad-crop with ``pad``, flip) or ``imagenet`` (random-resized-crop to 224, flip; un-augmented
    batches are center-cropped to 224)."""

    def __init__(self, mean: list[float], std: list[float], pad: int = 0, flip: bool = False,
                 device: torch.device | str = "cpu", augment: str = "pad-crop"):
        if augment not in ("pad-crop", "imagenet"):
            raise ValueError(f"unknown augment {augment!r}; choose one of: pad-crop, imagenet")
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.pad, self.flip, self.device = pad, flip, torch.device(device)
        self.mode = augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalise ``x``; augment when a ``generator`` is given (training batches)."""
        x = to_device(x, self.device)
        if generator is not None:
            x = self.augment(x, generator)
        elif self.mode == "imagenet" and x.shape[-2:] != (IMAGENET_CROP, IMAGENET_CROP):
            from torchvision.transforms.v2 import functional as TF

            x = TF.center_crop(x, [IMAGENET_CROP])
        return (x.float() - self.mean) / self.std

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.mode == "imagenet":
            x = random_resized_crop(x, IMAGENET_CROP, generator)
        elif self.pad:
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            off = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator)
            off = to_device(off, x.device)
            rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]
            cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]
            x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None],
                                           rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            mask = to_device(torch.rand(b, generator=generator) < 0.5, x.device)
            mask = mask.view(-1, 1, 1, 1)
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
