"""Image primitives shared by the in-memory datasets (:mod:`.data`) and the lazily decoded image
folders (:mod:`.folders`): the :class:`ImageData` container, listing and decoding class
folders, the class-balanced subset, and the random-resized-crop boxes."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


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
    spec: str | None = None  # the data spec it was loaded from (None: built in memory)

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


def items_per_class(train_subset: int, num_classes: int) -> int:
    if train_subset < num_classes:
        raise ValueError(f"--train-subset {train_subset} must be at least the number of "
                         f"classes ({num_classes})")
    return train_subset // num_classes


def first_per_class(files: dict[str, list[Path]], train_subset: int,
                     root: Path) -> dict[str, list[Path]]:
    """The first ``train_subset // C`` files of each of the C classes of ``root/train``: the
    class-balanced subset of an image folder, taken before anything is decoded."""
    per_class = items_per_class(train_subset, len(files))
    for c, paths in files.items():
        if len(paths) < per_class:
            raise ValueError(f"--train-subset {train_subset}: {root}/train/{c} has only "
                             f"{len(paths)} images, {per_class} needed")
    return {c: paths[:per_class] for c, paths in files.items()}


def list_split(root: Path, split: str, classes: list[str] | None) -> dict[str, list[Path]]:
    """``root/split``'s class folders and their image files, sorted (``os.scandir``: fast on
    ImageNet's 1.28M files); its classes must be ``classes`` when given (those of train/)."""
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {root} has no {split}/ folder: expected "
                                f"{root}/train/<class>/* and {root}/{split}/<class>/*")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not found:
        raise FileNotFoundError(f"{folder} has no class folders")
    if classes is not None and found != classes:
        raise ValueError(f"{folder} has classes {_shown(found)}, but train/ has "
                         f"{_shown(classes)}")
    files = {}
    for c in found:
        files[c] = sorted(Path(e.path) for e in os.scandir(folder / c)
                          if Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
        if not files[c]:
            raise FileNotFoundError(f"class folder {folder / c} has no images")
    return files


def _shown(classes: list[str], most: int = 10) -> str:
    """A class list for a message: whole when short, else its start and length."""
    return str(classes) if len(classes) <= most else f"{classes[:5]}... ({len(classes)})"


@contextmanager
def opened(path: Path) -> Iterator[Image.Image]:
    """``PIL.Image.open(path)``; any failure to read the image inside the block, a
    decompression bomb included, is one ValueError naming the file.

    The size limit is PIL's own (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 MP: it warns above it and
    refuses above twice that), the one users know how to raise; it is far above any training
    image. A warning turned into an error (``-W error``) is refused the same way.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"image {path} is too large to decode ({err}); raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS only if the file is trusted") from None
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit grayscale (modes ``I;16*``, and ``I`` within 0..65535)
    keeps its high byte (value >> 8), where ``convert("RGB")`` would clip it to white; float
    and wider integer pixels are refused."""
    from PIL import Image

    if img.mode == "I" or img.mode.startswith("I;16"):
        values = np.asarray(img)
        if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"image {path} has 32-bit integer pixels outside 0..65535: "
                             f"convert it to 8 or 16 bits")
        img = Image.fromarray((values >> 8).astype(np.uint8))
    elif img.mode == "F":
        raise ValueError(f"image {path} has 32-bit float pixels (mode F): convert it to 8 or "
                         f"16 bits")
    return img.convert("RGB")


def decode(path: Path, crop: int | None = None) -> torch.Tensor:
    """Decode to RGB uint8 C x H x W (:func:`to_rgb`); with ``crop``, resized to shorter side
    256 (bilinear, antialiased, as torchvision's ``Resize(256)``) and center-cropped to ``crop``
    x ``crop``."""
    with opened(path) as img:
        img = to_rgb(img, path)
        if crop is not None:
            from torchvision.transforms.v2 import functional as TF

            img = TF.center_crop(TF.resize(img, [IMAGENET_RESIZE]), [crop])
        array = np.asarray(img)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read from its header."""
    with opened(path) as img:
        return img.size


def decode_all(files: dict[str, list[Path]],
                crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    paths = [p for c in files for p in files[c]]
    labels = torch.tensor([i for i, c in enumerate(files) for _ in files[c]], dtype=torch.long)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(partial(decode, crop=crop), paths))
    shape = images[0].shape
    for path, img in zip(paths, images, strict=True):
        if img.shape != shape:
            raise ValueError(f"image {path} has shape {tuple(img.shape)}, expected "
                             f"{tuple(shape)} like {paths[0]}")
    return torch.stack(images), labels


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
