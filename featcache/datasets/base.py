"""The dataset contract shared by every on-disk format.

A dataset object is one split of an image classification dataset. It knows its class names, the integer label
of every sample and a *stable id* per sample (a relative path or an official index), so that a feature cache
written today can be checked against the dataset it is joined with tomorrow. Images are returned as uint8 RGB
tensors [3, H, W]; geometric transforms run on uint8 in the loader workers and normalisation runs on the device
(see featcache.transforms), which keeps host->device traffic at one byte per channel.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from featcache.errors import ConfigError, DatasetError
from featcache.hashing import content_digest, sha256_lines  # noqa: F401 - content_digest is re-exported

SPLITS = ("train", "test")


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


def stat_files(paths: Sequence[str]) -> np.ndarray:
    """[n, 2] int64 (size, mtime_ns) of every file: the cheap fingerprint of a file dataset's content.

    Serial while stats are fast (local, cached: ~5 µs each, where threads only add GIL traffic); threads once the
    first chunk shows slow calls (network file systems, cold disks: os.stat releases the GIL while it waits)."""
    out = np.empty((len(paths), 2), dtype=np.int64)

    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                st = os.stat(paths[i])
            except FileNotFoundError:
                raise DatasetError(f"image file {paths[i]} is missing; re-extract the dataset archive") from None
            except OSError as exc:
                raise DatasetError(f"image file {paths[i]} cannot be read ({exc.strerror or exc})") from None
            out[i, 0], out[i, 1] = st.st_size, st.st_mtime_ns

    import time

    step = 4096
    chunks = [(lo, min(lo + step, len(paths))) for lo in range(0, len(paths), step)]
    if not chunks:
        return out
    start = time.perf_counter()
    fill(*chunks[0])
    if len(chunks) == 1 or (time.perf_counter() - start) / (chunks[0][1] - chunks[0][0]) < 50e-6:
        for lo, hi in chunks[1:]:
            fill(lo, hi)
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        for fut in [pool.submit(fill, lo, hi) for lo, hi in chunks[1:]]:
            fut.result()
    return out


def files_fingerprint(paths: Sequence[str]) -> str:
    """sha256 over the files' (size, mtime_ns), in order: a changed, replaced or reordered file changes it."""
    return hashlib.sha256(stat_files(paths).astype("<i8").tobytes()).hexdigest()


class ImageDataset(Dataset):
    """One split of an image classification dataset.

    Subclasses fill ``classes``, ``sample_ids`` and ``targets`` in ``__init__`` and implement ``read_image``.
    ``__getitem__`` returns ``(image, label, index)``: the index travels with each sample so that cached teacher
    rows can be joined to a batch by position.
    """

    name: str = "dataset"
    # Side of the (square) images when they are all small and pre-centred (32 for CIFAR): the default transform
    # then resizes the whole image instead of cropping its centre.
    native_size: int | None = None

    def __init__(
        self,
        *,
        split: str,
        root: Path | None,
        classes: Sequence[str],
        sample_ids: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> None:
        if len(sample_ids) != len(targets):
            raise DatasetError(f"{self.name}: {len(sample_ids)} sample ids but {len(targets)} labels")
        self.split = split
        self.root = Path(root) if root is not None else None
        self.classes = list(classes)
        self.sample_ids = list(sample_ids)
        self.targets = np.asarray(targets, dtype=np.int64)
        # Parameters that change pixels without changing ids (e.g. the synthetic generator's seed).
        self.params = dict(params or {})
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise DatasetError(
                f"{self.name}: labels must lie in [0, {len(self.classes)}) but span "
                f"[{self.targets.min()}, {self.targets.max()}]"
            )

    # -- what subclasses implement -------------------------------------------------------------------------
    def image_path(self, index: int) -> str | None:
        """The file sample ``index`` is decoded from, for datasets of image files (None otherwise)."""
        return None

    def read_image(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a uint8 RGB tensor [3, H, W] (file datasets: the decoded file)."""
        path = self.image_path(index)
        if path is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither read_image nor image_path")
        return read_image_file(path)

    # -- content --------------------------------------------------------------------------------------------
    def image_paths(self) -> list[str] | None:
        """Every sample's file in index order, or None for datasets not made of files."""
        if len(self) == 0 or self.image_path(0) is None:
            return None
        return [str(self.image_path(i)) for i in range(len(self))]

    def read_with_digest(self, index: int) -> tuple[torch.Tensor, int]:
        """The image at ``index`` and the content digest of what it was decoded from (its file's bytes, else its
        pixels), from one read: extract records the digest next to the sample's row."""
        path = self.image_path(index)
        if path is not None:
            data = read_file_bytes(path)
            return decode_image_bytes(data, path), content_digest(data)
        image = self.read_image(index)
        return image, content_digest(image.numpy())

    def sample_digest(self, index: int) -> int:
        """The content digest of sample ``index`` (a file is hashed, not decoded): distill's content re-check."""
        path = self.image_path(index)
        if path is not None:
            return content_digest(read_file_bytes(path))
        return content_digest(self.read_image(index).numpy())

    def file_stats(self) -> np.ndarray | None:
        """[n, 2] (size, mtime_ns) of every sample's file, stat'ed once per object (the fingerprint and the split
        leak check share it); None for datasets not made of files."""
        if not hasattr(self, "_file_stats"):
            paths = self.image_paths()
            self._file_stats = None if paths is None else stat_files(paths)
        return self._file_stats

    def compute_fingerprint(self) -> str | None:
        """sha256 over every sample file's (size, mtime_ns), in id order (files_fingerprint); None for datasets not
        made of files (subclasses whose pixels live elsewhere override it)."""
        stats = self.file_stats()
        return None if stats is None else hashlib.sha256(stats.astype("<i8").tobytes()).hexdigest()

    def fingerprint(self) -> str | None:
        """The content fingerprint in this split's identity (computed once per object; files are stat'ed)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    # -- the common API --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.read_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> "ImageDataset":
        """Set the per-sample transform (uint8 -> uint8 geometry, see featcache.transforms) and return self."""
        self.transform = transform
        return self

    def identity(self) -> dict[str, Any]:
        """Everything about this split that changes what a teacher sees; hashed into cache keys and checked
        again when a cache is joined with a dataset."""
        return {
            "name": self.name,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "ids_sha256": sha256_lines(self.sample_ids),
            "labels_sha256": hashlib.sha256(self.targets.astype("<i8").tobytes()).hexdigest(),
            "classes_sha256": sha256_lines(self.classes),
            "params": json.loads(json.dumps(self.params, sort_keys=True)),
            # The content: a changed image changes the key, and an old cache is refused (docs/cache-format.md).
            "fingerprint": self.fingerprint(),
        }

    def __repr__(self) -> str:
        root = f", root={str(self.root)!r}" if self.root else ""
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes}{root})"


def _real_paths(paths: Sequence[str]) -> list[str]:
    """Paths with their directories resolved (symlinks, ``..``): a few realpath calls per folder, not per file."""
    dirs: dict[str, str] = {}
    out = []
    for p in paths:
        head, tail = os.path.split(p)
        real = dirs.get(head)
        if real is None:
            real = dirs[head] = os.path.realpath(head)
        out.append(os.path.join(real, tail))
    return out


_TAIL = 16 << 10  # bytes read from a file's end to find copies: a whole small image, the last scan data of a big one


def _tail_digest(path: str, size: int) -> bytes:
    """blake2b of a file's last _TAIL bytes (the whole file when smaller): equal for copies, rarely for others."""
    if size <= _TAIL:
        return hashlib.blake2b(read_file_bytes(path), digest_size=16).digest()
    try:
        with open(path, "rb") as f:
            f.seek(size - _TAIL)
            return hashlib.blake2b(f.read(_TAIL), digest_size=16).digest()
    except OSError as exc:
        raise DatasetError(f"image file {path} cannot be read ({exc.strerror or exc})") from None


def _same_bytes(a: str, b: str) -> bool:
    return read_file_bytes(a) == read_file_bytes(b)


def _tail_digests(files: list[tuple[str, int]]) -> list[bytes]:
    """_tail_digest of each (path, size): serial while reads are fast (local, cached: ~8 µs each), threads once the
    first chunk shows slow ones (cold disks, network file systems: reads release the GIL while they wait)."""
    import time

    step = 4096
    start = time.perf_counter()
    out = [_tail_digest(p, n) for p, n in files[:step]]
    if len(files) <= step or (time.perf_counter() - start) / step < 50e-6:
        return out + [_tail_digest(p, n) for p, n in files[step:]]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return out + list(pool.map(lambda f: _tail_digest(*f), files[step:], chunksize=256))


def copied_files(train: ImageDataset, test: ImageDataset) -> list[tuple[str, str]]:
    """(test file, train file) for every test image that is a byte-identical copy of a training image.

    Cheap first: only files whose byte sizes occur in both splits are read (the sizes come from the stat the
    fingerprint needs anyway), and of those only the last 16 KiB; candidates are then confirmed byte by byte. On
    CIFAR-10's 60,000 JPEGs sizes barely filter (all lie in 692..1124 bytes), so every file is read once: ~0.7 s
    with a warm page cache."""
    a, b = train.image_paths(), test.image_paths()
    sa, sb = train.file_stats(), test.file_stats()
    if a is None or b is None or sa is None or sb is None:
        return []
    common = set(sa[:, 0].tolist()).intersection(sb[:, 0].tolist())
    if not common:
        return []
    files_a = [(p, n) for p, n in zip(a, sa[:, 0].tolist()) if n in common]
    files_b = [(p, n) for p, n in zip(b, sb[:, 0].tolist()) if n in common]
    seen: dict[tuple[int, bytes], list[str]] = {}
    for (path, size), digest in zip(files_a, _tail_digests(files_a)):
        seen.setdefault((size, digest), []).append(path)
    copies = []
    for (path, size), digest in zip(files_b, _tail_digests(files_b)):
        for original in seen.get((size, digest), ()):
            if size <= _TAIL or _same_bytes(path, original):  # a small file's digest covered all of it
                copies.append((path, original))
                break
    return copies


def check_disjoint(train: ImageDataset, test: ImageDataset) -> None:
    """Refuse a test split that shares image files with the training split, or holds byte-identical copies of its
    images (a test/ copied from train/): its "test accuracy" would be measured on training images. Any one exact
    copy is refused; the real CIFAR-10 has none (near-duplicates, re-encoded or cropped, are not looked for)."""
    a, b = train.image_paths(), test.image_paths()
    if a is None or b is None:
        return
    fix = ("give the dataset a separate test split (for folder: a test/ folder, -o test_root=DIR or "
           "-o holdout=0.1)")
    shared = set(_real_paths(a)).intersection(_real_paths(b))
    if shared:
        example = min(shared)
        raise DatasetError(
            f"{test.name}: the test split holds {len(shared):,} of the training split's images (e.g. {example}), so "
            f"its accuracy would be measured on training images; {fix}"
        )
    copies = copied_files(train, test)
    if copies:
        copy, original = min(copies)
        raise DatasetError(
            f"{test.name}: {len(copies):,} of the test split's {len(b):,} images are byte-identical copies of training "
            f"images (e.g. {copy} = {original}), so its accuracy would be measured on training images; remove the "
            f"copies from the test split, or {fix}"
        )


def check_trainable(train: ImageDataset) -> None:
    """Refuse to train on a split whose images span fewer than two classes: every prediction is then right, and a
    run would report 100 % accuracy for learning nothing."""
    present = np.unique(train.targets)
    if len(present) >= 2:
        return
    names = ", ".join(repr(train.classes[int(k)]) for k in present) or "none"
    listed = f" (of {train.num_classes} listed)" if train.num_classes != len(present) else ""
    where = f" of {train.root}" if train.root is not None else ""
    subset = train.params.get("class_subset")
    hint = ("list at least 2 classes in --classes" if subset is not None
            else "give it images of at least 2 classes (for folder: 2 or more class subfolders)")
    raise DatasetError(
        f"{train.name}: the {train.split} split{where} has images of {len(present)} "
        f"class{'es' if len(present) != 1 else ''}{listed}: {names}; a "
        f"classifier trained on it is 100 % accurate by construction: {hint}"
    )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (--split): choose one of {', '.join(SPLITS)}")
    return split


class ClassSubset(ImageDataset):
    """The samples of ``base`` whose class is in ``classes``, labelled by position in ``classes`` (a teacher trained
    on one part of the classes, as the source nets of adaptive knowledge amalgamation are)."""

    def __init__(self, base: ImageDataset, classes: Sequence[str]) -> None:
        unknown = [c for c in classes if c not in base.classes]
        if unknown:
            raise DatasetError(f"{base.name}: class {unknown[0]!r} of the class list is not in the dataset")
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{base.name}: the class list names a class twice")
        position = {base.classes.index(c): k for k, c in enumerate(classes)}
        keep = np.flatnonzero(np.isin(base.targets, list(position)))
        super().__init__(
            split=base.split, root=base.root, classes=list(classes),
            sample_ids=[base.sample_ids[i] for i in keep],
            targets=np.array([position[int(t)] for t in base.targets[keep]], dtype=np.int64),
            params={**base.params, "class_subset": list(classes)},
        )
        self.name = base.name
        self.native_size = base.native_size
        self.base = base
        self.rows = keep

    def image_path(self, index: int) -> str | None:
        return self.base.image_path(int(self.rows[index]))

    def read_image(self, index: int) -> torch.Tensor:
        return self.base.read_image(int(self.rows[index]))

    def image_paths(self) -> list[str] | None:
        paths = self.base.image_paths()
        return None if paths is None else [paths[i] for i in self.rows]

    def compute_fingerprint(self) -> str | None:
        if self.base.image_paths() is not None:
            return super().compute_fingerprint()
        base = self.base.fingerprint()  # pixels held elsewhere (CIFAR pickles): the base's content + the selection
        if base is None:
            return None
        return hashlib.sha256(base.encode() + np.asarray(self.rows, dtype="<i8").tobytes()).hexdigest()


def first_of_each_class(targets: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Mask of the first ``want[c]`` samples of each class c, in sample order (a sample's rank within its class,
    vectorised): CIFAR's ``train_per_class`` and distill's ``--labels N/class``."""
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(targets, kind="stable")
    starts = np.searchsorted(targets[order], np.arange(len(want)))
    rank = np.empty(len(targets), dtype=np.int64)
    rank[order] = np.arange(len(targets)) - np.repeat(starts, np.bincount(targets, minlength=len(want)))
    return rank < np.asarray(want)[targets]


def split_classes(classes: Sequence[str], parts: int, seed: int = 0) -> list[list[str]]:
    """Split a class list into ``parts`` disjoint parts of (nearly) equal size, by a seeded permutation; each part
    keeps the dataset's class order."""
    if not 2 <= parts <= len(classes) // 2:  # each part's teacher trains on 2 classes or more (check_trainable)
        most = (f"choose between 2 and {len(classes) // 2}" if len(classes) >= 4
                else "a dataset needs at least 4 classes to be split")
        raise DatasetError(f"--parts {parts}: every part needs at least 2 of the {len(classes)} classes to train a "
                           f"teacher on; {most}")
    perm = np.random.default_rng(seed).permutation(len(classes))
    return [[classes[i] for i in sorted(chunk)] for chunk in np.array_split(perm, parts)]


def table_lines(path: Path):
    """(line number, stripped line) of a text table, skipping blank lines and # comments (the official metadata
    files and featcache's own split / class files)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield lineno, line


def read_class_list(path: Path) -> list[str]:
    """A class-subset file: one class name per line (blank lines and # comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--classes {path}: file not found (write one with `featcache split-classes`)")
    names = [line.split("#", 1)[0].strip() for _, line in table_lines(path)]
    if not names:
        raise DatasetError(f"--classes {path}: no class names in the file")
    return names
