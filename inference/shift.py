"""Distribution shift: CIFAR-10-C-style corruptions of a test set, the published CIFAR-10-C
files, and out-of-distribution image sets fitted to a run's input size.

The 15 corruptions x 5 severities follow Hendrycks & Dietterich's ``make_cifar_c.py`` (their
CIFAR-10-C parameters, not ImageNet-C's), re-implemented as vectorised NumPy/SciPy ops over a
whole batch of images (N, H, W, C) in [0, 1], returning values on the 0..255 scale that are
truncated to uint8 as theirs. Where their code calls OpenCV, ImageMagick or scikit-image the
equivalent filter is used (see docs/uncertainty.md); ``frost`` blends their weights with a
procedural ice texture, since their six frost photographs are not distributed here.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .outputs import write_atomic

SEVERITIES = (1, 2, 3, 4, 5)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CACHE_VERSION = 1  # bump when a corruption changes: cached images of older code are not reused

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------- helpers of make_cifar_c.py

def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest",
              truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian`` over the two image axes of (N, H, W[, C])."""
    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of each (N, H, W, C) image by ``factor`` (bilinear), cropped to H x W."""
    h = x.shape[1]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    resize = _zoom_matrix(ch, factor).astype(x.dtype)
    crop = np.moveaxis(x[:, top:top + ch, top:top + ch], -1, 1)  # (N, C, ch, ch)
    zoomed = np.moveaxis(resize @ crop @ resize.T, 1, -1)
    trim = (zoomed.shape[1] - h) // 2
    return zoomed[:, trim:trim + h, trim:trim + h]


def _zoom_matrix(size: int, factor: float) -> np.ndarray:
    """SciPy's ``ndimage.zoom(order=1)`` along one axis as a matrix (round(size factor), size):
    output pixel o interpolates the input linearly at o (size - 1) / (out - 1)."""
    out = int(round(size * factor))
    at = np.arange(out) * ((size - 1) / (out - 1) if out > 1 else 0.0)
    lower = np.minimum(np.floor(at).astype(int), size - 1)
    upper, frac = np.minimum(lower + 1, size - 1), at - lower
    matrix = np.zeros((out, size))
    np.add.at(matrix, (np.arange(out), lower), 1 - frac)
    np.add.at(matrix, (np.arange(out), upper), frac)
    return matrix


def _plasma_fractal(n: int, size: int, wibbledecay: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` diamond-square height maps in [0, 1], side ``size`` (a power of two)."""
    maps = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half:size:step, half:size:step] = wibbled_mean(squares)
        dr, ul = maps[:, half:size:step, half:size:step], maps[:, 0:size:step, 0:size:step]
        left = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        maps[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        maps[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _fractal_for(x: np.ndarray, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """One plasma fractal per image of ``x``, cropped to its H x W, shape (N, H, W, 1)."""
    n, h, w = x.shape[:3]
    size = 1 << (max(h, w) - 1).bit_length()  # the next power of two
    return _plasma_fractal(n, size, wibbledecay, rng)[:, :h, :w, None]


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's ``-motion-blur radius x sigma + angle`` of each image of (N, H, W, C),
    one angle (degrees) per image: a one-sided Gaussian-weighted line of 2 radius + 1 taps,
    edge pixels repeated (as the ``imagecorruptions`` re-implementation of Wand's call)."""
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    n, h, w = x.shape[:3]
    sin, cos = np.sin(np.deg2rad(angles)), np.cos(np.deg2rad(angles))
    rows, cols, images = np.arange(h), np.arange(w), np.arange(n)[:, None, None]
    out = np.zeros_like(x, dtype=np.float64)
    for i, weight in enumerate(weights):
        dy, dx = np.ceil(i * sin - 0.5).astype(int), np.ceil(i * cos - 0.5).astype(int)
        r = np.clip(rows[None, :] + dy[:, None], 0, h - 1)[:, :, None]
        c = np.clip(cols[None, :] + dx[:, None], 0, w - 1)[:, None, :]
        out += weight * x[images, r, c]
    return out


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """Their ``disk``: a normalised aliased disk on a 17 x 17 grid, blurred by OpenCV's 3 x 3
    Gaussian (reflect-101 border), trimmed to its non-zero centre."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    kernel = ndimage.correlate(disk, np.outer(taps, taps), mode="mirror")
    keep = int(np.abs(np.argwhere(kernel > 0) - 8).max())
    return kernel[8 - keep:9 + keep, 8 - keep:9 + keep]


def _gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB -> gray of (N, H, W, C) as (N, H, W, 1); gray images as they are."""
    if x.shape[-1] == 1:
        return x
    return (x[..., :3] @ np.array([0.299, 0.587, 0.114]))[..., None]


def _per_image_pil(x: np.ndarray, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply the PIL operation ``op`` to each image of (N, H, W, C) in [0, 1] as 8-bit."""
    images = np.round(x * 255).astype(np.uint8)
    gray = images.shape[-1] == 1
    out = [np.asarray(op(Image.fromarray(im[..., 0] if gray else im))) for im in images]
    return np.stack(out).reshape(images.shape).astype(np.float64)


# ----------------------------------------------------------------------------- corruptions

def gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.04, 0.06, .08, .09, .10][s - 1]
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [500, 250, 100, 75, 50][s - 1]
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [.01, .02, .03, .05, .07][s - 1]  # scikit-image's 's&p' noise: half salt, half pepper
    flipped, salted = rng.random(x.shape) <= c, rng.random(x.shape) <= 0.5
    return np.where(flipped, salted.astype(np.float64), x) * 255


def defocus_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias_blur = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    kernel = _disk(radius, alias_blur)[None, :, :, None]
    return np.clip(ndimage.correlate(x, kernel, mode="mirror"), 0, 1) * 255


def glass_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                (0.4, 1, 2)][s - 1]
    x = (_gaussian(x, sigma) * 255).astype(np.uint8)
    n, h, w = x.shape[:3]
    images = np.arange(n)
    # their "swap" assigns through NumPy views, so it copies pixel (h', w') onto (h, w)
    # and leaves (h', w') as it was; randint(-delta, delta) never draws +delta
    for _ in range(iterations):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, n))
                x[images, row, col] = x[images, row + dy, col + dx]
    return np.clip(_gaussian(x / 255, sigma), 0, 1) * 255


def motion_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    angles = rng.uniform(-45, 45, size=len(x))
    return np.clip(np.round(_motion_blur(x * 255, radius, sigma, angles)), 0, 255)


def zoom_blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    stop = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    factors = np.arange(1, stop, 0.01)
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, mix = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    x = x.astype(np.float32)
    layer = _clipped_zoom(rng.normal(size=(*x.shape[:3], 1), loc=loc, scale=scale), zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # an 8-bit image, as theirs
    angles = rng.uniform(-135, -45, size=len(x))
    layer = np.round(_motion_blur(layer, radius, sigma, angles)) / 255
    x = mix * x + (1 - mix) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def frost(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    ice = _fractal_for(x, 1.2, rng) ** 2  # stand-in for their frost photographs: rough, pale
    tint = np.array([0.80, 0.90, 1.0]) if x.shape[-1] == 3 else np.ones(x.shape[-1])
    return np.clip(image_weight * x * 255 + frost_weight * 255 * ice * tint, 0, 255)


def fog(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    strength, wibbledecay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _fractal_for(x, wibbledecay, rng)
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def brightness(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [.05, .1, .15, .2, .3][s - 1]
    value = x.max(-1, keepdims=True)  # HSV's V: raising it keeps hue and saturation
    raised = np.clip(value + c, 0, 1)
    out = np.where(value > 0, x * raised / np.where(value > 0, value, 1), raised)
    return np.clip(out, 0, 1) * 255


def contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [.75, .5, .4, .3, 0.15][s - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, channels = x.shape
    alpha, sigma, shift = np.array([(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                    (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][s - 1]) * h
    x = x.astype(np.float32)
    center, square = np.float32([h, w]) // 2, min(h, w) // 3
    src = np.float32([center + square, [center[0] + square, center[1] - square],
                      center - square])  # (x, y) points, as OpenCV reads them
    dst = src + rng.uniform(-shift, shift, size=(n, 3, 2)).astype(np.float32)
    # OpenCV's warpAffine samples the source at M^-1 (dst pixel): solve dst -> src per image
    homog = np.concatenate([dst, np.ones((n, 3, 1), np.float32)], axis=-1)
    inverse = np.linalg.solve(homog, np.broadcast_to(src, (n, 3, 2)))  # (n, 3, 2)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pixels = np.stack([xx, yy, np.ones_like(xx)], -1).reshape(-1, 3).astype(np.float32)
    src_xy = pixels @ inverse  # (n, h*w, 2)
    x = _sample(x, src_xy[..., 1].reshape(n, h, w), src_xy[..., 0].reshape(n, h, w), "mirror")
    dx = _gaussian(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(n, h, w)), sigma, "reflect", 3) * alpha
    x = _sample(x, yy + dy, xx + dx, "reflect")
    return np.clip(x, 0, 1) * 255


def _fold(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Integer indices folded into 0..size-1 as SciPy's boundary ``mode`` extends an axis:
    ``mirror`` (d c b | a b c d | c b a, OpenCV's reflect-101) or ``reflect`` (half-sample)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2 if mode == "mirror" else 2 * size
    index = np.mod(index, period)
    return np.where(index < size, index, period - index - (mode == "reflect"))


def _sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear samples of each image of (N, H, W, C) at per-image (N, H, W) coordinates, as
    ``scipy.ndimage.map_coordinates(order=1, mode=mode)``."""
    n, h, w, _ = x.shape
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    images = np.arange(n)[:, None, None]
    r = [_fold(r0, h, mode), _fold(r0 + 1, h, mode)]
    c = [_fold(c0, w, mode), _fold(c0 + 1, w, mode)]
    top = x[images, r[0], c[0]] * (1 - fc) + x[images, r[0], c[1]] * fc
    bottom = x[images, r[1], c[0]] * (1 - fc) + x[images, r[1], c[1]] * fc
    return top * (1 - fr) + bottom * fr


def pixelate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    h, w = x.shape[1:3]
    small = (int(w * c), int(h * c))
    return _per_image_pil(x, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX))


def jpeg_compression(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    quality = [80, 65, 58, 50, 40][s - 1]

    def compress(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer)

    return _per_image_pil(x, compress)


# their order (make_cifar_c.py); the names are those of the published .npy files
CORRUPTIONS: dict[str, Corruption] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)}


def check_corruptions(names: Sequence[str] | None) -> list[str]:
    """``names`` (all 15 when None) if each is a corruption; else a clear error."""
    if names is None:
        return list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"unknown corruption {', '.join(unknown) or '(none)'}; choose from: "
                         f"{', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def check_severities(severities: Sequence[int] | None) -> list[int]:
    """``severities`` sorted (all five when None) if each is in 1..5; else a clear error."""
    if severities is None:
        return list(SEVERITIES)
    if not severities or any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities {list(severities)} must be integers in 1..5")
    return sorted(set(severities))


def check_shift(spec: str) -> str:
    """``spec`` if it is ``corruptions`` or ``cifar10c:FOLDER``; else a clear error."""
    if spec == "corruptions" or (spec.startswith("cifar10c:") and len(spec) > len("cifar10c:")):
        return spec
    raise ValueError(f"unknown shift {spec!r}; choose corruptions or cifar10c:FOLDER")


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8, N x C x H x W) with corruption ``name`` at ``severity`` (1..5),
    deterministic in ``seed``: same shape and dtype, the i-th image a copy of the i-th."""
    check_corruptions([name])
    check_severities([severity])
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"corrupt takes uint8 N x C x H x W images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name), severity])
    x = images.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255
    out = CORRUPTIONS[name](x, severity, rng)
    return torch.from_numpy(np.uint8(np.clip(out, 0, 255))).permute(0, 3, 1, 2).contiguous()


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "pyro-implicit" / "shift"


def cached_corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0,
                   cache_dir: Path | None = None) -> torch.Tensor:
    """:func:`corrupt`, kept as an .npz in ``cache_dir`` (default ~/.cache/pyro-implicit/shift)
    keyed by a hash of the images, the corruption, severity, seed and code version."""
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(repr((tuple(images.shape), name, severity, seed, CACHE_VERSION)).encode())
    folder = cache_dir or default_cache_dir()
    path = folder / f"{name}-{severity}-seed{seed}-{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return torch.from_numpy(stored["images"])
    out = corrupt(images, name, severity, seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez_compressed(f, images=out.numpy()))
    return out


def _cifar10c_file(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """A published CIFAR-10-C ``NAME.npy`` (memory-mapped, N x 32 x 32 x 3) and the labels of
    its folder's ``labels.npy``."""
    labels = path.parent / "labels.npy"
    if not path.is_file() or not labels.is_file():
        raise FileNotFoundError(f"CIFAR-10-C: need {path} and {labels} (the published .npy files)")
    images, y = np.load(path, mmap_mode="r"), np.load(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(y):
        raise ValueError(f"{path}: {images.shape} is not N x H x W x 3 with {len(y)} labels")
    return images, torch.from_numpy(y.astype(np.int64))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()  # a copy of the map


def load_cifar10c_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All severities of a published CIFAR-10-C file as (uint8 N x C x H x W images, labels)."""
    images, labels = _cifar10c_file(path)
    return _to_tensor(images), labels


def cifar10c_sets(folder: Path, names: Sequence[str] | None = None,
                  severities: Sequence[int] | None = None):
    """Yield (corruption, severity, images, labels) from a published CIFAR-10-C folder: each
    ``NAME.npy`` stacks severities 1..5 of the test set, ``labels.npy`` their labels."""
    present = sorted(p.stem for p in Path(folder).glob("*.npy") if p.stem != "labels")
    names = [n for n in present if n in names] if names is not None else present
    if not names:
        raise FileNotFoundError(f"{folder}: no CIFAR-10-C corruption files (NAME.npy)")
    for name in names:
        images, labels = _cifar10c_file(Path(folder) / f"{name}.npy")
        per = len(images) // len(SEVERITIES)
        for s in check_severities(severities):
            rows = slice((s - 1) * per, s * per)
            yield name, s, _to_tensor(images[rows]), labels[rows]


def fit_images(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """uint8 images resized (bilinear, antialiased) to ``shape`` (C, H, W); gray images are
    repeated to RGB, RGB ones averaged to gray when C is 1."""
    channels, h, w = shape
    x = images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
    if x.shape[-2:] != (h, w):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                            align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)
