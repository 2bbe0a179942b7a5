"""featcache.datasets.images: image files decoded as a training run needs them (8-bit RGB), and files that are
not what they claim (empty, 16-bit, a decompression bomb) handled before they reach a model."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import FOLDER_EXTRACT, invoke, one_line_error


# -- bad images --------------------------------------------------------------------------------------------------
def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG (PIL cannot write one): IHDR bit depth 16, colour type 2, rows filtered with type 0."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_pngs_decode_to_8_bits_alone_or_mixed(home, folder_tree, tmp_path):
    from featcache.datasets.base import read_image_file

    px = np.random.default_rng(0).integers(0, 65536, size=(32, 32, 3), dtype=np.uint16)
    write_png16(tmp_path / "a.png", px)
    img = read_image_file(tmp_path / "a.png")
    assert img.dtype == torch_uint8() and img.shape == (3, 32, 32)
    expected = (px.astype(np.int64) * 255 + 32767) // 65535
    assert np.array_equal(img.permute(1, 2, 0).numpy(), expected.astype(np.uint8))
    for k in range(3):  # a folder that mixes 16-bit PNGs with the 8-bit images
        write_png16(folder_tree / "train" / "cat" / f"deep{k}.png", px)
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--workers", "2")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_empty_image_is_named_in_one_line(home, folder_tree, workers):
    (folder_tree / "train" / "dog" / "zero.jpg").write_bytes(b"")
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--workers", workers)
    one_line_error(r, "zero.jpg", "empty")
    (folder_tree / "train" / "dog" / "zero.jpg").write_bytes(b"not an image at all")
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--workers", workers)
    one_line_error(r, "zero.jpg", "not a readable image")


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of width x height zero pixels: ~0.2 MB that decodes to width*height*3 bytes of RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(bytes(height * (1 + (width + 7) // 8)), 1)  # filter byte 0 + packed bits, all zero
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_it_is_decoded(home, folder_tree, monkeypatch):
    from featcache.datasets import images as base  # where every format decodes

    bomb = png_bomb(20_000, 20_000)  # 1.2 GB of RGB once decoded
    assert len(bomb) < 300_000
    (folder_tree / "train" / "dog" / "bomb.png").write_bytes(bomb)
    real = base._decode_image

    def guarded(data, *a, **k):
        assert len(data) != len(bomb), "the bomb was decoded"
        return real(data, *a, **k)

    monkeypatch.setattr(base, "_decode_image", guarded)
    monkeypatch.setattr(base, "_pil_rgb", lambda data: pytest.fail("the bomb was decoded by PIL"))
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train")
    one_line_error(r, "bomb.png", "20,000 x 20,000 = 400,000,000 pixels", "limit of 89,478,485",
                   "FEATCACHE_MAX_IMAGE_PIXELS=400000000")


@pytest.mark.slow  # two loader workers start twice: ~1 s
def test_the_pixel_limit_reaches_the_loader_workers(home, folder_tree, monkeypatch):
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "1000")  # the folder_tree's 32 x 32 images are 1,024 pixels
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--workers", "2")
    one_line_error(r, ".png is 32 x 32 = 1,024 pixels", "limit of 1,000", "FEATCACHE_MAX_IMAGE_PIXELS=1024")
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "1024")
    r = invoke("extract", *FOLDER_EXTRACT, "--data-root", folder_tree / "train", "--workers", "2")
    assert r.exit_code == 0, r.output


def torch_uint8():
    import torch

    return torch.uint8


# -- the images' own size ----------------------------------------------------------------------------------------


def test_uniform_square_size_is_read_from_headers_and_none_for_mixed_sizes(tmp_path):
    from PIL import Image

    from featcache.datasets.images import uniform_square_size
    from helpers import write_image

    squares = [str(tmp_path / f"{k}.{ext}") for k, ext in enumerate(["png", "jpg", "bmp", "webp"])]
    for k, p in enumerate(squares):
        write_image(Path(p), k, size=(32, 32))
    assert uniform_square_size(squares) == 32
    exif = tmp_path / "exif.jpg"  # the frame header after 20 KB of EXIF: found by the second, longer read
    Image.new("RGB", (32, 32)).save(exif, exif=b"Exif\x00\x00" + bytes(20_000))
    assert uniform_square_size([*squares, str(exif)]) == 32
    write_image(tmp_path / "wide.png", 9, size=(48, 32))
    assert uniform_square_size([*squares, str(tmp_path / "wide.png")]) is None
    write_image(tmp_path / "wide2.png", 9, size=(48, 32))
    assert uniform_square_size([str(tmp_path / "wide.png"), str(tmp_path / "wide2.png")]) is None  # not square
    # A bounded sample spread over the list: its ends are always read, the middle here is not.
    middle = [*squares[:2], str(tmp_path / "wide.png"), *squares[2:]]
    assert uniform_square_size(middle, sample=2) == 32 and uniform_square_size(middle, sample=5) is None


def test_uniform_square_size_never_blocks_on_a_planted_fifo(tmp_path):
    from featcache.datasets.images import uniform_square_size
    from helpers import write_image

    write_image(tmp_path / "a.png", 1, size=(32, 32))
    os.mkfifo(tmp_path / "b.png")
    assert uniform_square_size([str(tmp_path / "a.png"), str(tmp_path / "b.png")]) is None
