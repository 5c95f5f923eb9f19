"""Decoding awkward image files: decompression bombs and 16-bit or wider pixels."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pyro_implicit.inference.images import decode, decode_all, image_size


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, width: int, height: int, depth: int, colour: int, rows: bytes) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` (whatever ``rows`` holds)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture
def bomb(tmp_path):
    path = tmp_path / "train" / "a" / "bomb.png"
    path.parent.mkdir(parents=True)
    write_png(path, 20000, 20000, 8, 0, b"\x00" * 21)  # 400 MP claimed, a few bytes stored
    return path


@pytest.mark.parametrize("read", [decode, image_size, lambda p: decode_all({"a": [p]})],
                         ids=["decode", "image_size", "decode_all"])
def test_a_decompression_bomb_is_one_error_naming_the_file_and_size(bomb, read):
    with pytest.raises(ValueError, match=r"image .*bomb.png is too large to decode \(Image size "
                                         r"\(400000000 pixels\) exceeds limit .*MAX_IMAGE_PIXELS"):
        read(bomb)


def test_the_limit_is_pils_and_a_warning_made_an_error_is_refused_alike(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((10, 15, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 150 pixels: over it, not over twice
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode(path).shape == (3, 10, 15)  # PIL's default: a warning only
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match=r"big.png is too large to decode \(Image size "
                                             r"\(150 pixels\) exceeds limit of 100 pixels"):
            decode(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70)
    with pytest.raises(ValueError, match=r"big.png is too large.*exceeds limit of 140 pixels"):
        image_size(path)


def gradient16() -> np.ndarray:
    """Every 16-bit value of a 256-step gradient, offset so the low byte is not 0."""
    return (np.arange(256, dtype=np.uint16) * 257).reshape(4, 64) + np.uint16(3)


def test_a_16_bit_grayscale_png_keeps_its_high_byte(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(gradient16()).save(path)
    assert Image.open(path).mode == "I;16"
    expected = gradient16() >> 8  # 0, 1, ..., 255: convert("RGB") alone clips them to white
    out = decode(path)
    assert out.shape == (3, 4, 64)
    assert all(np.array_equal(channel, expected) for channel in out.numpy())
    assert decode_all({"a": [path]})[0][0, 0].numpy().tolist() == expected.tolist()


def test_a_16_bit_image_is_scaled_before_the_crop(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((300, 260), 0x80FF, np.uint16)).save(path)
    assert decode(path, crop=224).unique().tolist() == [0x80]


def test_a_16_bit_rgb_png_keeps_its_high_bytes(tmp_path):
    path = tmp_path / "rgb16.png"
    pixels = np.array([[[0x1234, 0xABCD, 0xFF00], [0x00FF, 0x8000, 0x7FFF]]], ">u2")
    write_png(path, 2, 1, 16, 2, b"\x00" + pixels.tobytes())
    assert decode(path).permute(1, 2, 0).numpy().tolist() == (pixels >> 8).tolist()


def test_32_bit_pixels_are_scaled_in_the_16_bit_range_else_refused(tmp_path):
    inside, outside, floats = tmp_path / "i.tif", tmp_path / "wide.tif", tmp_path / "f.tif"
    Image.fromarray(gradient16().astype(np.int32)).save(inside)
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(outside)
    Image.fromarray(np.zeros((2, 2), np.float32)).save(floats)
    assert Image.open(inside).mode == "I"
    assert np.array_equal(decode(inside)[0].numpy(), gradient16() >> 8)
    with pytest.raises(ValueError, match=r"wide.tif has 32-bit integer pixels outside 0..65535"):
        decode(outside)
    with pytest.raises(ValueError, match=r"f.tif has 32-bit float pixels \(mode F\)"):
        decode(floats)
