"""Image files to uint8 RGB tensors [3, H, W], every format through one path: the header is checked against the
pixel limit before anything is decoded (a few MB of PNG can decode to GBs), then torchvision's decoders, PIL for the
rest; 16-bit images are scaled to 8 bits."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from featcache.errors import ConfigError, DatasetError, check_at_least
from featcache.util.fileio import read_regular

# torchvision's libjpeg-turbo/libpng decoders are several times faster than PIL for this job. torchvision 0.29
# deprecates them in favour of TorchCodec (warning on import/use); PIL remains the fallback if they disappear.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
try:
    from torchvision.io import ImageReadMode as _ImageReadMode
    from torchvision.io import decode_image as _decode_image

    _RGB = _ImageReadMode.RGB
except ImportError:  # pragma: no cover - a future torchvision without decoders
    _decode_image = None
    _RGB = None


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of an image file; a missing or unreadable file is a one-line DatasetError naming it."""
    try:
        # os-level read: a third of the cost of open().read() for the small files this is mostly called on.
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size + 1)
            while len(data) <= size:  # a file that grew, or a short read
                more = os.read(fd, 1 << 20)
                if not more:
                    break
                data += more
            return data
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise DatasetError(f"image file {path} is missing; re-extract the dataset archive") from None
    except IsADirectoryError:
        raise DatasetError(f"image file {path} is a directory; remove it from the dataset") from None
    except OSError as exc:
        raise DatasetError(f"image file {path} cannot be read ({exc.strerror or exc})") from None


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """16-bit (or wider) decoded pixels scaled to 8 bits with rounding: 65535 -> 255, as an 8-bit export would."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        wide = image.to(torch.int32)
        return ((wide * 255 + 32767) // 65535).to(torch.uint8)
    raise ValueError(f"unsupported pixel type {image.dtype}")


def _pil_rgb(data: bytes) -> np.ndarray:
    """PIL's decode as uint8 [H, W, 3]; 16-bit modes are scaled (PIL's own convert("RGB") clips them at 255)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.int64)
            maxval = 65535 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else 255
            gray = ((np.clip(arr, 0, maxval) * 255 + maxval // 2) // maxval).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


# A small file can declare an enormous image (a decompression bomb: a few hundred KB of PNG that decodes to GBs).
# The header's size is checked before any decoder runs. The default is PIL's own bomb threshold; an environment
# variable (not a flag) because it must reach every DataLoader worker and library caller, and no cache key.
MAX_PIXELS_ENV = "FEATCACHE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: about 9,459 x 9,459 (256 MiB of RGB)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame (not DHT, JPG, DAC)


def check_target_size(flag: str, value: int) -> None:
    """A size the images are resized to: >= 1 and no more pixels than featcache decodes (a typo such as 100000
    would otherwise allocate tens of GB per image before anything says why)."""
    check_at_least(flag, value, 1)
    if value * value > max_image_pixels():
        raise ConfigError(f"{flag} {value}: {value:,} x {value:,} px is above the {max_image_pixels():,}-pixel limit "
                          f"of an image (${MAX_PIXELS_ENV}); choose a smaller size", flag=flag)


def max_image_pixels() -> int:
    """The largest image (width x height, times frames for GIFs) featcache decodes: $FEATCACHE_MAX_IMAGE_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r}: expected a whole number of pixels >= 1, e.g. 200000000 "
                          f"(unset it for the default {DEFAULT_MAX_PIXELS:,})")
    return value


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _gif_frames(data: bytes) -> int:
    """The number of images in a GIF (torchvision decodes them all), walking its blocks without decoding."""
    flags = data[10]
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, n = 0, len(data)
    while i < n:
        kind = data[i]
        if kind == 0x2C:  # image descriptor, [local colour table], LZW code size, sub-blocks
            frames += 1
            local = data[i + 9] if i + 9 < n else 0
            i += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        elif kind == 0x21:  # extension: label, sub-blocks
            i += 2
        else:  # trailer (0x3B) or damage
            break
        while i < n and data[i]:
            i += data[i] + 1
        i += 1
    return max(frames, 1)


def image_header_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, frames) from the header of a PNG, JPEG, GIF, WebP or BMP file's bytes, without decoding;
    None for another format or a header cut short."""
    n = len(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and n >= 24 and data[12:16] == b"IHDR":
        return (*struct.unpack_from(">II", data, 16), 1)
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        return None if size is None else (*size, 1)
    if data[:6] in (b"GIF87a", b"GIF89a") and n >= 13:
        return (*struct.unpack_from("<HH", data, 6), _gif_frames(data))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and n >= 30:
        kind = data[12:16]
        if kind == b"VP8 ":
            width, height = struct.unpack_from("<HH", data, 26)
            return width & 0x3FFF, height & 0x3FFF, 1
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1
        if kind == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1, 1
        return None
    if data[:2] == b"BM" and n >= 26:
        if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return (*struct.unpack_from("<HH", data, 18), 1)
        width, height = struct.unpack_from("<ii", data, 18)
        return abs(width), abs(height), 1  # a negative height means top-down rows
    return None


def _pil_header_size(data: bytes) -> tuple[int, int, int] | None:
    """The size PIL reads from any other format's header (Image.open reads no pixels); None if PIL cannot."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height, 1
    except Exception:  # noqa: BLE001 - unreadable here is reported by the decoder, with its reason
        return None


def check_image_size(data: bytes, path: str | Path) -> None:
    """Refuse an image whose header declares more pixels than max_image_pixels(), before anything decodes it."""
    size = image_header_size(data) or _pil_header_size(data)
    if size is None:
        return
    width, height, frames = size
    pixels, limit = width * height * frames, max_image_pixels()
    if pixels > limit:
        shape = f"{width:,} x {height:,}" + (f" x {frames:,} frames" if frames > 1 else "")
        raise DatasetError(
            f"image file {path} is {shape} = {pixels:,} pixels ({pixels * 3 / 2**30:.1f} GiB decoded), above the "
            f"limit of {limit:,} (a decompression bomb?); if it is genuine, raise the limit with "
            f"{MAX_PIXELS_ENV}={pixels}, or replace or remove it"
        )


def decode_image_bytes(data: bytes, path: str | Path) -> torch.Tensor:
    """Decode an image file's bytes to a uint8 RGB tensor [3, H, W].

    torchvision's decoder handles JPEG/PNG/GIF/WebP quickly; PIL is the fallback for anything it refuses (CMYK
    JPEGs and BMPs exist in the wild, e.g. in Oxford-IIIT Pet). 16-bit PNGs are scaled to 8 bits, so a folder that
    mixes them with 8-bit JPEGs yields one pixel type. An image larger than max_image_pixels() is refused from its
    header, before any decoder allocates it.
    """
    if not data:
        raise DatasetError(f"image file {path} is empty (0 bytes); replace or remove it")
    check_image_size(data, path)
    if _decode_image is not None:
        try:
            image = _decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=_RGB)
            return _to_uint8(image)
        except (RuntimeError, ValueError):
            pass
    try:
        arr = _pil_rgb(data)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is corrupt
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DatasetError(f"image file {path} is not a readable image ({reason}); replace or remove it") from None


def read_image_file(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor [3, H, W] (see decode_image_bytes)."""
    return decode_image_bytes(read_file_bytes(path), path)


# -- the images' own size, from their headers ------------------------------------------------------------------------

PROBE_SAMPLE = 128  # files whose headers say whether a folder's images share one square size
_HEADER_BYTES = (4096, 1 << 16)  # read first; then again for a JPEG whose frame header follows a large EXIF block


def file_header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the first bytes of an image file, decoding nothing; None when the file is not a regular
    file, cannot be read, or its format's header is not where it is looked for (the decoder reports those)."""
    for limit in _HEADER_BYTES:
        try:
            # The link resolved first (a dataset may be assembled from links), never blocking on a FIFO.
            data = read_regular(os.path.realpath(path), limit)
        except OSError:
            return None
        size = image_header_size(data) or _pil_header_size(data)
        if size is not None:
            return size[0], size[1]
        if len(data) < limit:
            return None
    return None


def uniform_square_size(paths: list[str], sample: int = PROBE_SAMPLE) -> int | None:
    """N when the headers of ``sample`` files spread evenly over ``paths`` (all of them, when fewer) all say N x N,
    else None. Deterministic: the same list gives the same files, so extract and distill decide alike."""
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(sample, len(paths))).round().astype(np.int64))
    sizes = {file_header_size(paths[int(i)]) for i in picks}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size[0] if size is not None and size[0] == size[1] else None
