"""The cache format: every file name, dataset name and manifest field, in one place.

A cache is a directory ``<store>/<key>/`` holding ``manifest.json`` and HDF5 shards named ``<part>-NNNNN.h5``.
Parts: ``data`` (one row per dataset sample, row r == dataset index r) and ``noise`` (one row per generated
random image, row i == noise index i). Each shard holds contiguous (unchunked, unfiltered) datasets:

    features  [n, D]  float16 (or float32)  penultimate-layer output of the teacher
    logits    [n, C]  float32 (or float16)  pre-softmax scores, so any temperature can be applied later
    index     [n]     int64                 dataset (or noise) index of each row

docs/cache-format.md describes the same thing for humans; tests/test_cache.py checks the two agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from featcache.config import typecheck
from featcache.errors import FeatcacheError
from featcache.specs import BlockSpec, NoiseSpec, Timing, TransformSpec, ViewSpec, WeightsInfo
from featcache.util.fileio import TMP_SUFFIX, fsync_dir, loads_json, printable, read_regular  # noqa: F401
from featcache.util.locks import LOCK_FILE

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 64 << 20  # bytes: far above an ImageNet-sized manifest; a larger one is refused, not read
LOCK = LOCK_FILE  # advisory write lock (featcache.util.locks)
SHARD_SUFFIX = ".h5"
RANK_SHARDS_PREFIX = "shards-rank"  # shards-rank<R>.json: shards a torchrun rank finished, until rank 0 merges them

PART_DATA = "data"
PART_NOISE = "noise"
PARTS = (PART_DATA, PART_NOISE)

FEATURES = "features"
LOGITS = "logits"
INDEX = "index"
LOGITS_INDEX = "logits_index"  # with extract --topk-logits k: class index of each kept logit [n, k] int32
CONTENT = "content"  # data part: [n] int64 digest of each sample's bytes (its file, else its pixels)
CONTENT_DIGEST = "blake2b-64"  # the manifest's ``content``: how CONTENT was computed (datasets.base.content_digest)
AUG = "aug"  # view parts: [n, 5] float32 augmentation parameters of each row (featcache.views)
FIELDS = (FEATURES, LOGITS, INDEX)
# --dtype int8: "features" holds int8 rows q = round(f / s), s = max|f| / 127 per row, and this dataset the [n] float32
# scales s; readers hand methods float rows (FEATURE_READ_DTYPE), dequantised as late as they can (cache/codec.py).
FEATURE_SCALE = "feature_scale"
INT8_CODEC = "int8-row-absmax"  # the manifest's ``feature_codec`` of an int8 cache
FEATURE_READ_DTYPE = "float16"  # what int8 rows are read back as
# --project N: the fitted linear projection, a file of the cache's own directory with two float32 datasets; the
# shards hold (f - mean) @ components.T.
PROJECTION_FILE = "projection.h5"
PROJECTION_MEAN = "mean"  # [D]
PROJECTION_COMPONENTS = "components"  # [N, D], orthonormal rows
PROJECTION_METHOD = "pca"
BLOCK_PREFIX = "blocks/"  # block features: one dataset per cached block, "blocks/<name>" [n, C·P·P] (extract --blocks)


def dense_logits(values, index, num_classes: int):
    """[B, k] top-k logits + [B, k] class indices -> dense [B, C] torch logits; the classes not kept get the row's
    smallest kept logit (so softmax keeps their mass small but finite, and MSE-based losses stay defined)."""
    import torch

    values = torch.as_tensor(values)
    fill = values.min(dim=1, keepdim=True).values
    dense = fill.expand(values.shape[0], num_classes).clone()
    return dense.scatter_(1, torch.as_tensor(index).long(), values)


def block_field(name: str) -> str:
    """The dataset (and field) name of a cached intermediate block."""
    return BLOCK_PREFIX + name

FEATURE_DTYPES = ("float16", "float32", "int8")
LOGITS_DTYPES = ("float16", "float32")
from featcache.config import DEFAULT_SHARD_ROWS  # noqa: E402,F401 - the default lives with extract's options

_SHARD_RE = re.compile(r"^(data|noise|view\d+)-(\d{5})\.h5$")  # viewK: augmented view K (extract --views)


def shard_name(part: str, number: int) -> str:
    return f"{part}-{number:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    m = _SHARD_RE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def make_key(identity: dict[str, Any], teacher: str, dataset: str, split: str) -> str:
    """Readable prefix + sha256 of the canonical identity: same inputs => same key => reuse."""
    return f"{_slug(teacher, dataset, split)}-{_digest(identity)}"


def _slug(teacher: str, dataset: str, split: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{teacher}-{dataset}-{split}".lower()).strip("-")


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:12]


@dataclass
class ShardInfo:
    part: str
    number: int
    start: int  # first row (inclusive)
    stop: int  # last row (exclusive)
    file: str
    bytes: int
    sha256: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class ProjectionInfo:
    """The projection file of a projected cache (extract --project N), recorded and checked like a shard."""

    file: str  # always PROJECTION_FILE
    bytes: int
    sha256: str
    method: str  # PROJECTION_METHOD
    dim: int  # N: the width of the stored rows
    source_dim: int  # D: the teacher's feature width
    sample: int  # rows of the split the projection was fitted on
    seed: int  # the seed that drew them


@dataclass
class TeacherInfo:
    name: str
    weights: WeightsInfo  # recorded as WeightsInfo.record(): the identity, the ref and a random seed
    feature_layer: str
    num_features: int
    num_classes: int
    classes: list[str] | None  # class names the logits cover, when known
    classes_source: str  # "dataset" | "weights" | "unknown"


@dataclass
class Manifest:
    key: str
    identity: dict[str, Any]  # exactly what was hashed into the key
    teacher: TeacherInfo
    dataset: dict[str, Any]  # ImageDataset.identity()
    classes: list[str]  # the dataset's class names
    transform: TransformSpec  # the view the teacher saw
    dtype: str
    logits_dtype: str
    precision: str
    shard_rows: int
    rows: dict[str, int]  # part -> number of rows
    noise: NoiseSpec | None  # random images cached too (extract --noise)
    shards: list[ShardInfo] = field(default_factory=list)
    # Cached intermediate blocks, in order; each row stores the block's output average-pooled to pool × pool,
    # flattened channel-major (C, P, P), in ``dtype``.
    blocks: list[BlockSpec] = field(default_factory=list)
    # Augmented views (extract --views K); parts view1..view{K-1} hold them, with the per-row augmentation parameters
    # in an extra "aug" dataset [n, 5] float32.
    views: ViewSpec | None = None
    # extract --topk-logits k: "logits" holds each row's k largest logits (descending) and "logits_index" their
    # classes; readers that need dense logits rebuild them (featcache.cache.format.dense_logits).
    topk_logits: int | None = None
    # How the data part's per-row "content" digests were computed (CONTENT_DIGEST); None in caches written before
    # featcache recorded them (they cannot be re-checked against the images and are refused).
    content: str | None = None
    # extract --dtype int8: INT8_CODEC (the per-row scales are each shard's FEATURE_SCALE dataset); None: float rows.
    feature_codec: str | None = None
    # extract --project N: the projection file (PROJECTION_FILE); the rows are N-dimensional. None: unprojected.
    projection: ProjectionInfo | None = None
    complete: bool = False
    format_version: int = FORMAT_VERSION
    created: str = ""
    finished: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    teacher_accuracy: float | None = None
    command: str = ""

    # -- shard bookkeeping -------------------------------------------------------------------------------------
    def num_shards(self, part: str) -> int:
        n = self.rows.get(part, 0)
        return (n + self.shard_rows - 1) // self.shard_rows

    def shard_range(self, part: str, number: int) -> tuple[int, int]:
        start = number * self.shard_rows
        return start, min(start + self.shard_rows, self.rows[part])

    def shards_of(self, part: str) -> list[ShardInfo]:
        return sorted((s for s in self.shards if s.part == part), key=lambda s: s.number)

    def expected_shards(self) -> list[tuple[str, int]]:
        return [(p, i) for p in self.rows for i in range(self.num_shards(p))]

    def files(self) -> list[ShardInfo | ProjectionInfo]:
        """Every data file the manifest records (``file``, ``bytes``, ``sha256``): the shards, then the projection."""
        return [*self.shards, *([self.projection] if self.projection is not None else [])]

    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.files())

    @property
    def feature_dim(self) -> int:
        """The width of the stored feature rows: the projection's N, else the teacher's D."""
        return self.projection.dim if self.projection is not None else self.teacher.num_features

    # -- (de)serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timing"] = self.timing.to_dict()  # only what is known (an unfinished extract has no rate yet)
        d["teacher"]["weights"] = self.teacher.weights.record()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        """A manifest from its JSON, every field checked (it may come from someone else's store): ValueError names
        the first field that is not what featcache writes, VersionError a format this featcache does not read."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        version = d.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise VersionError(version)
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} (this featcache reads {FORMAT_VERSION})")
        try:
            m = typecheck.conform(d, cls)  # every field typed, the specs built (and checked by their own rules)
        except typecheck.TypeMismatch as exc:
            raise ValueError(str(exc)) from None
        except FeatcacheError as exc:
            raise ValueError(str(exc)) from None
        m.check()
        problem = identity_problem(m)
        if problem:
            raise IdentityMismatch(problem)
        return m

    def check(self) -> None:
        """The values a reader relies on, as strictly as the flags they come from: a shard's file is exactly the
        name of its part and number (never a path out of the cache's directory), rows and ranges add up."""
        if not is_cache_key(self.key):
            raise ValueError(f"key {self.key!r} is not a cache key")
        for name, value, choices in (("dtype", self.dtype, FEATURE_DTYPES),
                                     ("logits_dtype", self.logits_dtype, LOGITS_DTYPES)):
            if value not in choices:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(choices)}")
        self._check_codec()
        for name, count in (("shard_rows", self.shard_rows), ("teacher.num_features", self.teacher.num_features),
                            ("teacher.num_classes", self.teacher.num_classes)):
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count}")
        if self.topk_logits is not None and not 1 <= self.topk_logits <= self.teacher.num_classes:
            raise ValueError(f"topk_logits {self.topk_logits} is not within 1..{self.teacher.num_classes}")
        if self.content not in (None, CONTENT_DIGEST):
            raise ValueError(f"content {self.content!r} is not {CONTENT_DIGEST!r}")
        for part, n in self.rows.items():
            if not _PART_RE.match(part) or n < 0:
                raise ValueError(f"rows: part {part!r} with {n} rows")
        for b in self.blocks:
            if not _BLOCK_RE.match(b.name):
                raise ValueError(f"blocks: {b.name!r} is not a block name")
        seen = set()
        for s in self.shards:
            if s.part not in self.rows or not 0 <= s.number < self.num_shards(s.part):
                raise ValueError(f"shards: {s.part} shard {s.number} is outside the cache's rows")
            if s.file != shard_name(s.part, s.number):
                raise ValueError(f"shards: file {s.file!r} is not {shard_name(s.part, s.number)!r} (a shard is a "
                                 "file of its cache's own directory)")
            if (s.start, s.stop) != self.shard_range(s.part, s.number):
                raise ValueError(f"shards: {s.file} rows [{s.start}, {s.stop}) differ from its part's layout")
            if s.bytes < 0 or not _SHA256_RE.match(s.sha256):
                raise ValueError(f"shards: {s.file} has no valid size and sha256")
            if s.file in seen:
                raise ValueError(f"shards: {s.file} is listed twice")
            seen.add(s.file)

    def _check_codec(self) -> None:
        """feature_codec and projection: known values, consistent with dtype, the blocks and the key's identity."""
        want = INT8_CODEC if self.dtype == "int8" else None
        if self.feature_codec != want or self.identity.get("feature_codec") != want:
            raise ValueError(f"feature_codec {self.feature_codec!r} (identity: {self.identity.get('feature_codec')!r}) "
                             f"does not fit dtype {self.dtype} (expected {want!r})")
        if want and self.blocks:
            raise ValueError("blocks: an int8 cache holds no blocks (they would share its dtype)")
        p, spec = self.projection, self.identity.get("projection")
        if p is None and spec is None:
            return
        if p is None or not isinstance(spec, dict) or spec != projection_identity(p.dim, p.sample, p.seed):
            raise ValueError(f"projection {p and asdict(p)!r} disagrees with the identity's {spec!r}")
        if p.file != PROJECTION_FILE or p.method != PROJECTION_METHOD:
            raise ValueError(f"projection: file {p.file!r} is not {PROJECTION_FILE!r} (a file of the cache's own "
                             f"directory) or method {p.method!r} is not {PROJECTION_METHOD!r}")
        if p.bytes < 0 or not _SHA256_RE.match(p.sha256):
            raise ValueError(f"projection: {p.file} has no valid size and sha256")
        if not 1 <= p.dim <= p.source_dim or p.source_dim != self.teacher.num_features or p.sample < p.dim:
            raise ValueError(f"projection: {p.dim} dims of {p.source_dim} fitted on {p.sample} rows do not fit a "
                             f"teacher of {self.teacher.num_features} features")

    def save(self, directory: Path) -> None:
        """Atomically replace ``directory/manifest.json`` (write temp, fsync, rename, fsync dir)."""
        atomic_write_text(directory / MANIFEST, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Manifest":
        from featcache.errors import CacheError, CacheIdentityError, CacheVersionError

        directory = Path(directory)
        path = directory / MANIFEST
        name = printable(directory.name)
        try:
            m = cls.from_dict(loads_json(read_regular(path, MANIFEST_LIMIT, whole=True)))
        except FileNotFoundError:
            raise CacheError(f"{printable(str(path))} is missing: not a featcache cache directory") from None
        except VersionError as exc:
            raise CacheVersionError(
                f"cache {name} was written by a newer featcache (format_version {exc.version}; this "
                f"one reads {FORMAT_VERSION}): upgrade featcache to read it (it is left as it is)") from None
        except IdentityMismatch as exc:
            raise CacheIdentityError(f"cache {name}: {exc}; the manifest was edited or copied from another cache, so "
                                     "its rows are not what its key names: it is refused (remove it with `featcache "
                                     f"cache rm {name}` and extract again)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{printable(str(path))} is unreadable ({printable(str(exc))}); remove the cache with "
                             "`featcache cache rm`") from None
        # A cache is found by its directory's name: the name must be the key the manifest's identity gives (a work
        # directory of an extract or import is named KEY@HOST@PID@NONCE).
        if m.key not in (directory.name, directory.name.split("@", 1)[0] if "@" in directory.name else None):
            raise CacheIdentityError(
                f"cache {name} holds the manifest of cache {m.key}: a cache copied or renamed under another key is "
                f"refused (its rows are not what the name {name} stands for); remove it with `featcache cache rm "
                f"{name}`, or give it back its own name {m.key}")
        return m


class IdentityMismatch(ValueError):
    """A manifest whose key is not the one its recorded identity gives, or whose fields disagree with that identity."""


class VersionError(ValueError):
    """A manifest of a newer cache format than this featcache reads."""

    def __init__(self, version: int):
        super().__init__(f"format_version {version}")
        self.version = version


_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")  # a directory name of the store, never a path
_PART_RE = re.compile(r"^(data|noise|view\d+)$")
_BLOCK_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def projection_identity(dim: int, sample: int, seed: int) -> dict[str, Any]:
    """What a projection adds to a cache's identity (and the manifest's record must agree with): how it is fitted."""
    return {"method": PROJECTION_METHOD, "dim": dim, "sample": sample, "seed": seed}


def identity_problem(m: "Manifest") -> str | None:
    """Why ``m``'s key is not the one its recorded identity gives, or its fields are not those the identity records
    (None when they agree). A cache is looked up by its key, so a reader relies on this before trusting its rows.
    An identity of the extract's form (with its teacher and dataset) gives the whole key; any other (a benchmark's
    synthetic cache) its digest."""
    ident = m.identity
    digest = _digest(ident)
    if m.key.rsplit("-", 1)[-1] != digest:
        return f"its key {m.key} is not the hash of the identity its manifest records"
    if "teacher" not in ident and "dataset" not in ident:
        return None
    teacher, dataset = ident.get("teacher"), ident.get("dataset")
    names = [teacher.get("name") if isinstance(teacher, dict) else None,
             *((dataset.get("name"), dataset.get("split")) if isinstance(dataset, dict) else (None, None))]
    if not all(isinstance(n, str) for n in names):
        return "its identity does not name the teacher, the dataset and the split"
    slug = _slug(*names)  # type: ignore[arg-type]  # every name is a str (checked above)
    if f"{slug}-{digest}" != m.key:
        return f"its key {m.key} is not the key its identity gives ({slug}-{digest})"
    for name, recorded, actual in _identity_fields(m, teacher):  # type: ignore[arg-type]  # a dict (names checked)
        if recorded != actual:
            return f"its {name} ({_brief(actual)}) is not the one its identity records ({_brief(recorded)})"
    return None


def _identity_fields(m: "Manifest", teacher: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, as the identity records it, as the manifest says) for each field readers use that the identity covers."""
    i, t = m.identity, m.teacher
    out = [("teacher", teacher["name"], t.name), ("weights", teacher.get("weights"), t.weights.identity()),
           ("dataset", i.get("dataset"), m.dataset), ("dtype", i.get("dtype"), m.dtype),
           ("logits_dtype", i.get("logits_dtype"), m.logits_dtype), ("precision", i.get("precision"), m.precision),
           ("transform", _spec(i.get("transform"), TransformSpec), m.transform),
           ("image_size", teacher.get("image_size"), m.transform.image_size),
           ("noise", _spec(i.get("noise"), NoiseSpec | None), m.noise),
           ("views", _spec(i.get("views"), ViewSpec | None), m.views),
           ("topk_logits", i.get("topk_logits"), m.topk_logits)]
    if teacher.get("num_classes") is not None:  # None: the architecture's own head
        out.append(("teacher.num_classes", teacher["num_classes"], t.num_classes))
    if m.blocks or m.complete:  # the blocks are described once the teacher is built, before any shard is written
        pools = sorted({b.pool for b in m.blocks})
        out.append(("blocks", i.get("blocks"), {"names": [b.name for b in m.blocks], "pool": pools[0]}
                    if len(pools) == 1 else pools or None))
    return out


def _spec(value: Any, hint: Any) -> Any:
    """An identity's record as the spec the manifest holds (an old record, without a field added since, reads as the
    spec with that field's default, as its reader always did)."""
    try:
        return typecheck.conform(value, hint)
    except (typecheck.TypeMismatch, FeatcacheError, TypeError, ValueError):
        return "not a spec"


def _brief(value: Any) -> str:
    text = repr(value.to_dict() if hasattr(value, "to_dict") else value)
    return printable(text if len(text) <= 60 else text[:57] + "...")


def is_cache_key(text: str) -> bool:
    """Whether ``text`` can name a cache: a directory name of the store, never a path."""
    return bool(_KEY_RE.match(text))


def shard_path(directory: Path, shard: ShardInfo | ProjectionInfo) -> Path:
    """Where a shard's file is: in its cache's directory, and never a symbolic link (featcache writes none; one could
    point anywhere on the machine)."""
    from featcache.errors import CacheError

    path = Path(directory) / shard.file
    if path.is_symlink():
        raise CacheError(f"cache {Path(directory).name}: shard {shard.file} is a symbolic link (to "
                         f"{os.readlink(path)}); featcache reads only the files of a cache's own directory: remove "
                         "the link and re-run the extract")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a fresh exclusive temp file, fsync, rename, fsync the directory);
    on failure the old file stays and no temp file is left behind."""
    from featcache.util.fileio import write_text_atomic

    write_text_atomic(path, text, flag=str(path.name))
