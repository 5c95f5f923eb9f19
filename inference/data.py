"""Datasets decoded once into in-memory uint8 tensors, batched and augmented as tensors.

Specs: ``digits`` (scikit-learn's 8x8 digits, built in), ``cifar10`` and ``svhn`` (torchvision;
``download`` for users with internet; SVHN's train split, no augmentation), ``imagefolder:PATH``
(``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, e.g. the shared CIFAR-10 tree), and
``imagenet:PATH`` (``PATH/train/<class>/*``, ``PATH/val/<class>/*``), which is not decoded into
memory but per batch by DataLoader workers (:mod:`.folders`).

Augmentation (``ImageData.augment``): ``pad-crop`` (CIFAR style: random crop of the zero-padded
image, optional flip) for small images; ``imagenet`` for large ones: training images are decoded
resized to shorter side 256 and center-cropped to 256x256, then each batch gets a random-resized
crop to 224 (scale (0.08, 1), ratio (3/4, 4/3)) and a flip; test images are decoded as the
standard resize-256 + center-crop-224, and un-augmented training batches are center-cropped to
224 the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

DATA_CHOICES = "digits, cifar10, svhn, imagefolder:PATH, imagenet:PATH"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
AUGMENT_CHOICES = ("auto", "pad-crop", "imagenet")
AUTO_IMAGENET_ABOVE = 64  # "auto" picks imagenet for images whose shorter side exceeds this
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
PATH_SPECS = ("imagefolder:", "imagenet:")  # spec prefixes followed by a PATH


@dataclass
class ImageData:
    """Train and test images (uint8, N x C x H x W) with labels, classes and augmentation
    (``augment``: ``pad-crop`` uses ``pad``; ``imagenet`` random-resized-crops to 224)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    pad: int  # random-crop padding
    flip: bool  # random horizontal flips
    augment: str = "pad-crop"  # or "imagenet"

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
    if spec in ("digits", "cifar10", "svhn") or any(
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
    check_augment(augment)
    if spec.startswith("imagenet:"):  # lazy: decoded per batch (see .folders)
        from .folders import load_imagenet

        return load_imagenet(Path(spec.split(":", 1)[1]), train_subset)
    if spec.startswith("imagefolder:"):
        return _imagefolder(Path(spec.split(":", 1)[1]), train_subset, augment)
    if augment == "imagenet":
        raise ValueError(f"augment 'imagenet' is for imagefolder: data with large images, not "
                         f"{spec!r}; use 'pad-crop' or 'auto'")
    data = _digits() if spec == "digits" else (_svhn if spec == "svhn" else _cifar10)(
        root, download)
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


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; a host tensor bound for a GPU goes through pinned memory without
    blocking, so the copy does not synchronise the host with the device."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _first_per_class(files: dict[str, list[Path]], train_subset: int,
                     root: Path) -> dict[str, list[Path]]:
    """The first ``train_subset // C`` files of each of the C classes of ``root/train``: the
    class-balanced subset of an image folder, taken before anything is decoded."""
    per_class = _per_class(train_subset, len(files))
    for c, paths in files.items():
        if len(paths) < per_class:
            raise ValueError(f"--train-subset {train_subset}: {root}/train/{c} has only "
                             f"{len(paths)} images, {per_class} needed")
    return {c: paths[:per_class] for c, paths in files.items()}


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


def _decode(path: Path, crop: int | None = None) -> torch.Tensor:
    """Decode to RGB uint8 C x H x W; with ``crop``, resized to shorter side 256 (bilinear,
    antialiased, as torchvision's ``Resize(256)``) and center-cropped to ``crop`` x ``crop``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if crop is not None:
                from torchvision.transforms.v2 import functional as TF

                img = TF.center_crop(TF.resize(img, [IMAGENET_RESIZE]), [crop])
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _decode_all(files: dict[str, list[Path]],
                crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    paths = [p for c in files for p in files[c]]
    labels = torch.tensor([i for i, c in enumerate(files) for _ in files[c]], dtype=torch.long)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(partial(_decode, crop=crop), paths))
    shape = images[0].shape
    for path, img in zip(paths, images, strict=True):
        if img.shape != shape:
            raise ValueError(f"image {path} has shape {tuple(img.shape)}, expected "
                             f"{tuple(shape)} like {paths[0]}")
    return torch.stack(images), labels


def _imagefolder(root: Path, train_subset: int | None, augment: str) -> ImageData:
    train_files = _list_split(root, "train", None)
    classes = list(train_files)
    test_files = _list_split(root, "test", classes)
    if train_subset is not None:
        train_files = _first_per_class(train_files, train_subset, root)
    if augment == "auto":
        first = next(iter(train_files.values()))[0]
        augment = "imagenet" if min(_image_size(first)) > AUTO_IMAGENET_ABOVE else "pad-crop"
    if augment == "imagenet":
        train_x, train_y = _decode_all(train_files, IMAGENET_RESIZE)
        test_x, test_y = _decode_all(test_files, IMAGENET_CROP)
        return ImageData(train_x, train_y, test_x, test_y, classes, pad=0, flip=True,
                         augment="imagenet")
    train_x, train_y = _decode_all(train_files)
    test_x, test_y = _decode_all(test_files)
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
    files = _list_split(root, "train", None)
    first = _per_class(train_subset, len(files))
    for c, paths in files.items():
        if len(paths) < first + per_class:
            raise ValueError(f"{root}/train/{c} has {len(paths)} images: too few for "
                             f"{first} training and {per_class} held-out ones")
    return _decode_all({c: paths[-per_class:] for c, paths in files.items()})


def random_resized_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
) -> torch.Tensor:
    """``n`` crop boxes (top, left, height, width) drawn as torchvision's ``RandomResizedCrop``:
    the first of 10 tries (area fraction in ``scale``, log-uniform aspect in ``ratio``) that fits,
    else the central crop clamped to ``ratio``; all tries of all images drawn at once."""
    area = torch.empty(n, 10).uniform_(*scale, generator=generator) * (height * width)
    log_ratio = torch.empty(n, 10).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                             generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round().long()
    h = (area / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # index of the first try that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    u = torch.rand(2, n, generator=generator)
    top = (u[0] * (height - h + 1)).long()
    left = (u[1] * (width - w + 1)).long()
    if width / height < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif width / height > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    fallback = ~fits.any(1)
    h, w = h.masked_fill(fallback, fh), w.masked_fill(fallback, fw)
    top = top.masked_fill(fallback, (height - fh) // 2)
    left = left.masked_fill(fallback, (width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


def random_resized_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch ``x`` cropped to its own random box and resized to ``size`` x
    ``size`` (bilinear, antialiased), as torchvision's ``RandomResizedCrop``."""
    from torchvision.transforms.v2 import functional as TF

    boxes = random_resized_boxes(x.shape[0], x.shape[-2], x.shape[-1], generator).tolist()
    return torch.stack([TF.resized_crop(img, *box, [size, size], antialias=True)
                        for img, box in zip(x, boxes, strict=True)])


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
