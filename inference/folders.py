"""ImageNet-sized image folders, decoded lazily: ``imagenet:PATH`` (``PATH/train/<class>/*`` and
``PATH/val/<class>/*``, torchvision's ``ImageFolder`` layout).

Real ImageNet (1.28M JPEGs) cannot be decoded into memory like the other datasets, so its
splits are :class:`ImageFiles`: lists of paths that act as the uint8 image arrays of
:class:`~.images.ImageData` (``len``, indexing with an index tensor gives a subset), decoded per
batch by a :class:`~torch.utils.data.DataLoader` with worker processes (and pinned memory for
a GPU). The pipeline is the standard one, with torchvision v2 functional transforms:

- training: a random-resized crop of the original image to 224x224 (scale (0.08, 1), ratio
  (3/4, 4/3), the algorithm of ``RandomResizedCrop``) and a horizontal flip. Each image's
  randomness comes from its own generator, seeded by (run seed, epoch, position in the epoch),
  so batches are the same whatever the number of workers, and a resumed run sees the same crops;
- evaluation and BN recalibration: shorter side resized to 256, center crop 224.

Images are normalised on the device with ImageNet's usual channel statistics (computing them
over 1.28M images would take an epoch of decoding).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import (
    IMAGENET_CROP,
    ImageData,
    decode,
    first_per_class,
    list_split,
    random_resized_boxes,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


class ImageFiles:
    """A lazy uint8 image array (N x 3 x H x W once decoded): image paths, decoded on demand."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> ImageFiles:
        """A subset (slice, index tensor or array), still lazy."""
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        if isinstance(index, torch.Tensor | np.ndarray):
            index = index.tolist()
        return ImageFiles([self.paths[int(i)] for i in index])


@dataclass
class FolderData(ImageData):
    """:class:`~.images.ImageData` whose images are :class:`ImageFiles` (``augment`` imagenet)."""

    @property
    def in_channels(self) -> int:
        return 3

    def channel_stats(self) -> tuple[list[float], list[float]]:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)


def is_lazy(x) -> bool:
    """Whether ``x`` is a lazy image array (decoded by a DataLoader) rather than a tensor."""
    return isinstance(x, ImageFiles)


def load_imagenet(root: Path, train_subset: int | None = None) -> FolderData:
    """The image folder ``root`` (``train/`` and ``val/``) as lazy :class:`FolderData`;
    ``train_subset=K`` keeps the first K/C training images of each class (sorted names)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageNet not found at {root}: --data imagenet:PATH needs PATH/train/<class>/* and "
            "PATH/val/<class>/* (torchvision's ImageFolder layout)")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"ImageNet folder {root} has no {split}/ folder: expected {root}/train/<class>/* "
                f"and {root}/val/<class>/* (torchvision's ImageFolder layout; sort the "
                "validation images into class folders first)")
    train = list_split(root, "train", None)
    classes = list(train)
    val = list_split(root, "val", classes)
    if train_subset is not None:
        train = first_per_class(train, train_subset, root)

    def flat(files: dict[str, list[Path]]) -> tuple[ImageFiles, torch.Tensor]:
        labels = [i for i, c in enumerate(files) for _ in files[c]]
        return (ImageFiles([p for c in files for p in files[c]]),
                torch.tensor(labels, dtype=torch.long))

    (train_x, train_y), (test_x, test_y) = flat(train), flat(val)
    return FolderData(train_x, train_y, test_x, test_y, classes, pad=0, flip=True,
                      augment="imagenet")


class _EvalImages(Dataset):
    """Resize 256 + center crop 224 (evaluation, BN recalibration)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode(self.paths[i], IMAGENET_CROP)


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the augmentation of the ``position``-th image of epoch ``epoch``."""
    entropy = np.random.SeedSequence([seed % 2**64, epoch, position])
    return int(entropy.generate_state(1, np.uint64)[0])


class _TrainImages(Dataset):
    """Random-resized crop to 224 and flip, from a generator per (index, item seed) key."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int, int]) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.v2 import functional as TF

        index, seed, epoch, position = key
        generator = torch.Generator().manual_seed(item_seed(seed, epoch, position))
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                top, left, h, w = random_resized_boxes(1, img.height, img.width,
                                                       generator)[0].tolist()
                img = TF.resized_crop(img, top, left, h, w, [IMAGENET_CROP, IMAGENET_CROP],
                                      antialias=True)
                if torch.rand(1, generator=generator).item() < 0.5:
                    img = TF.horizontal_flip(img)
                array = np.asarray(img)
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _loader(dataset: Dataset, batches: list[list], workers: int, pin: bool) -> DataLoader:
    # its own generator: a DataLoader iterator otherwise draws its base seed from torch's global
    # RNG, which the z draws use (a resumed run would then draw other z)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                      collate_fn=torch.stack, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(0))


def uint8_batches(x, starts: Iterable[int], batch_size: int, workers: int = 0,
                  pin: bool = False, order: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """The uint8 batches ``x[s:s + batch_size]`` for ``s`` in ``starts`` (of ``x[order]`` when an
    index ``order`` is given): slices of a tensor, or, for :class:`ImageFiles`, decoded (resize
    256, center crop 224) by a DataLoader."""
    index = torch.arange(len(x)) if order is None else order
    if not is_lazy(x):
        for s in starts:
            yield x[s:s + batch_size] if order is None else x[index[s:s + batch_size]]
        return
    batches = [index[s:s + batch_size].tolist() for s in starts]
    yield from _loader(_EvalImages(x.paths), batches, workers, pin)


def train_batches(x: ImageFiles, batches: list[torch.Tensor], positions: list[torch.Tensor],
                  seed: int, epoch: int, workers: int = 0,
                  pin: bool = False) -> Iterator[torch.Tensor]:
    """Augmented uint8 training batches: images ``batches[k]`` (indices into ``x``), the image
    at ``positions[k][j]`` of the epoch cropped and flipped from its own seeded generator."""
    keys = [[(int(i), seed, epoch, int(p)) for i, p in zip(index.tolist(), pos.tolist(),
                                                             strict=True)]
            for index, pos in zip(batches, positions, strict=True)]
    yield from _loader(_TrainImages(x.paths), keys, workers, pin)
