"""The cached rows inside a user's loop: :class:`RowJoin` (rows of a batch of dataset indices) and
:class:`CachedRows` (a Dataset: each sample with its rows, keyed by teacher name; with K cached views, the image in
the view its rows describe).

Both refuse caches that do not describe the dataset (ids, labels, split, classes; a sample of the images re-hashed
against the digests the extract recorded). Where the rows live is decided as ``featcache distill`` decides it
(featcache.distill.placement): in RAM while the budget lasts, else gathered from the shards per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from featcache.api.adapters import wrap_dataset
from featcache.api.cache import Cache
from featcache.cache.codec import dequantise
from featcache.cache.format import FEATURE_SCALE, FEATURES, LOGITS, PART_DATA
from featcache.cache.leases import Lease
from featcache.cache.reader import FeatureCache
from featcache.cache.store import CacheStore
from featcache.cache.usage import record_use
from featcache.datasets.base import ImageDataset
from featcache.errors import CacheMismatchError, ConfigError, check_choice

VIEW_MODES = (None, "eval", "cached")  # CachedRows(view=...): the user's sample as is, the teacher's view, a K view


class TeacherRow(dict):
    """One teacher's rows: ``row.features`` [B, D] (or [D] per sample), ``row.logits`` [B, C], and with K cached
    views ``row.view`` (which view each row describes). Also a dict (``row["features"]``), so PyTorch's default
    collate batches it."""

    @property
    def features(self) -> torch.Tensor:
        """The features [B, D] (per sample: [D])."""
        return self[FEATURES]

    @property
    def logits(self) -> torch.Tensor:
        """The logits [B, C] (per sample: [C])."""
        return self[LOGITS]

    @property
    def view(self) -> torch.Tensor | None:
        """Which cached view each row describes (``CachedRows(view=...)`` only), else None."""
        return self.get("view")


class Rows(Mapping):
    """The rows of several teachers, keyed by teacher name (the caches' keys where two caches share a teacher name);
    ``rows[0]`` is the first teacher's, as the caches were given. Collated by PyTorch's default collate."""

    def __init__(self, rows: Mapping[str, Any]) -> None:
        self._rows = {name: r if isinstance(r, TeacherRow) else TeacherRow(r) for name, r in rows.items()}

    def __getitem__(self, key: str | int) -> TeacherRow:
        if isinstance(key, int):
            return list(self._rows.values())[key]
        return self._rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"Rows({', '.join(self._rows)})"


def teacher_names(caches: Sequence[FeatureCache]) -> list[str]:
    """Each cache's teacher name, or its key where two caches share a teacher name."""
    names = [c.manifest.teacher.name for c in caches]
    return [n if names.count(n) == 1 else c.key for n, c in zip(names, caches, strict=True)]


class RowJoin:
    """The cached rows of several teachers for batches of dataset indices: one gather per field per batch.

    Each teacher's table sits in RAM when ``featcache distill`` would put it there (one budget: ``cache_ram``, else
    half the RAM available; ``mode`` "auto", "ram" or "disk"), else its rows are read from the shards per batch (one
    sorted read per touched shard) while the join holds a lease on the cache (``close()`` or ``with`` ends it)."""

    def __init__(self, teachers: Sequence[str | FeatureCache | Cache], dataset: Dataset | ImageDataset | None = None,
                 *, dataset_name: str | None = None, split: str = "train", cache_dir: str | Path | None = None,
                 transform=None, content_check: str = "sample", check: bool = True,
                 fields: Sequence[str] = (FEATURES, LOGITS), cache_ram: str | int | None = None, mode: str = "auto",
                 **dataset_kwargs: Any) -> None:
        if not teachers:
            raise ConfigError("teachers: name at least one cache (key, key prefix or FeatureCache)")
        if dataset is None and check:
            # Rows joined to data nobody checked could be another dataset's, in another order: refuse by default.
            raise ConfigError("dataset: pass the dataset the rows are joined to (it is checked against the caches); "
                              "check=False joins by index unchecked")
        check_choice("mode", mode, ("auto", "ram", "disk"))
        store = CacheStore(Path(cache_dir) if cache_dir else None)
        self.caches = [t.reader if isinstance(t, Cache) else t if isinstance(t, FeatureCache) else store.open(str(t))
                       for t in teachers]
        self.names = teacher_names(self.caches)
        record_use(store, [c.key for c in self.caches])
        # Leased while the shards are read (`cache rm` and `cache gc` wait): released once every table is in RAM.
        self._lease: Lease | None = Lease(self.caches, what="python RowJoin").__enter__()
        try:
            self._check(dataset, dataset_name, split, transform, content_check, dataset_kwargs)
            self.fields = tuple(fields)
            self._place(cache_ram, mode)
        except BaseException:
            self.close()
            raise
        if "disk" not in self.modes:
            self.close()  # every table is in RAM: the shards are not read again

    def _check(self, dataset, dataset_name, split, transform, content_check, dataset_kwargs) -> None:
        self.dataset = None
        if dataset is not None:
            if dataset_name is None:  # the name the caches were extracted under (checked like every other field)
                dataset_name, split = (self.caches[0].manifest.dataset.get(k) for k in ("name", "split"))
            self.dataset = wrap_dataset(dataset, name=dataset_name, split=split, **dataset_kwargs)
            for c in self.caches:
                c.check_dataset(self.dataset, transform)
                if content_check != "off":
                    c.check_content(self.dataset, content_check)
        n = {c.num_rows() for c in self.caches}
        if len(n) != 1:
            raise CacheMismatchError("teachers: the caches hold different numbers of rows; they describe "
                                     "different datasets")
        self.num_rows = n.pop()

    def _place(self, cache_ram: str | int | None, mode: str) -> None:
        """distill's decision (featcache.distill.placement.plan_tables) for these tables; int8 caches keep their int8
        rows and scales in RAM and join() dequantises each batch's rows."""
        from featcache.distill.loader import InMemoryTable
        from featcache.distill.placement import Budget, plan_tables

        self.budget = Budget.of(cache_ram)
        stored = [c.stored_fields(self.fields) for c in self.caches]
        need = [c.num_rows() * c.row_bytes(f) for c, f in zip(self.caches, stored, strict=True)]
        plan = plan_tables(need, [1024 * c.row_bytes() for c in self.caches], mode=mode, shuffle="auto",
                           views=False, view_count=0, budget=self.budget)
        self.modes = list(plan.modes)
        self.tables = [InMemoryTable(c, PART_DATA, f) if m == "ram" else None
                       for c, f, m in zip(self.caches, stored, self.modes, strict=True)]

    def __len__(self) -> int:
        return self.num_rows

    def join(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> Rows:
        """Per teacher (keyed by name; ``[0]`` is the first), ``{"features": [B, D], "logits": [B, C]}`` for dataset
        rows ``indices`` (cache dtypes; an int8 cache's features as float16): a 1-D sequence of integers in
        [0, len(self)). Anything else (floats, a boolean mask, an index past the end) is a :class:`RowIndexError`,
        never a truncated, wrapped or reinterpreted gather."""
        idx = self.check_indices(indices)
        out = {}
        for name, c, t in zip(self.names, self.caches, self.tables, strict=True):
            if t is None:  # out of core
                rows = shard_rows(c, idx, self.fields)
            else:
                rows = dict(zip(c.stored_fields(self.fields), t.gather(idx), strict=True))
                if FEATURE_SCALE in rows and FEATURE_SCALE not in self.fields:
                    rows[FEATURES] = dequantise(rows[FEATURES], rows.pop(FEATURE_SCALE))
            out[name] = TeacherRow(rows)
        return Rows(out)

    def check_indices(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
        """``indices`` as int64 row numbers, or RowIndexError saying why they are not."""
        idx = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if idx.size == 0:
            return np.empty(0, dtype=np.int64)
        if idx.dtype == np.bool_:
            raise RowIndexError(f"indices: a boolean mask is not a list of rows; pass np.flatnonzero(mask) "
                                f"(a mask over all {self.num_rows} rows)")
        if not np.issubdtype(idx.dtype, np.integer):
            raise RowIndexError(f"indices: row numbers must be integers, got {idx.dtype} (e.g. {idx.flat[0]!r}); "
                                "cast them yourself if that is what you mean")
        if idx.ndim != 1:
            raise RowIndexError(f"indices: expected a 1-D sequence of row numbers, got shape {tuple(idx.shape)}")
        low, high = idx.min(), idx.max()
        if low < 0 or high >= self.num_rows:  # np.take would wrap a negative index
            raise RowIndexError(f"indices must lie in [0, {self.num_rows}) (the caches' rows), got "
                                f"{low if low < 0 else high}")
        return idx.astype(np.int64, copy=False)

    def close(self) -> None:
        """Release the lease on the caches (a join of out-of-core tables reads no more rows afterwards)."""
        if self._lease is not None:
            self._lease.release()
        if "disk" in getattr(self, "modes", ()):
            self.tables = []

    def __getstate__(self) -> dict[str, Any]:
        # A copy in a DataLoader worker reads under the lease its parent holds (a lease is a thread and files).
        return {**self.__dict__, "_lease": None}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the lease files name a dead process anyway
            self.close()

    def __enter__(self) -> "RowJoin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_rows(cache: FeatureCache, idx: np.ndarray, fields: Sequence[str]) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of ``fields`` read from the shards: one pread per run of consecutive rows and field, straight into
    the output (featcache.cache.direct). Random batches of 256 from a 200k x 2048 float16 cache (warm page cache, a
    loaded 2-core box): 19k rows/s, where h5py's point selection of the same rows gave 4.2k; consecutive rows 340k."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    stored = cache.stored_fields(fields)
    out = cache.empty_rows(len(uniq), stored)
    cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
    for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(uniq)]]), strict=True):
        if b > a:
            cache.read_range_into(int(uniq[a]), int(uniq[b - 1]) + 1, out, int(a))
    rows = {f: torch.from_numpy(out[f][inverse]) for f in stored}
    if FEATURE_SCALE in rows and FEATURE_SCALE not in fields:
        rows[FEATURES] = dequantise(rows[FEATURES], rows.pop(FEATURE_SCALE))
    return rows


class RowIndexError(ConfigError, IndexError):
    """Indices that cannot mean rows of the caches (floats, a mask, out of range): a featcache error and an
    IndexError, so either ``except`` catches it."""


class CachedRows(Dataset):
    """``dataset[i]`` with the teachers' rows appended: ``(*dataset[i], rows)``, ``rows`` a :class:`Rows` keyed by
    teacher name (``rows["my-r18"].features``; ``rows[0]`` is the first teacher's). PyTorch's default collate batches
    it.

    ``view``: None (default) leaves the user's sample as it is; ``"eval"`` replaces its image by the teacher's view,
    normalised (what the rows describe: ``Cache.view``); ``"cached"`` (caches extracted with ``views=K``) draws one of
    the K cached views per item, uniformly, and gives the image in that view — random crop and flip included — with
    the rows of that view and ``rows[name].view`` saying which: the augmentation and the rows always agree. Other
    keywords are RowJoin's (``dataset_name`` defaults to the name the caches were extracted under)."""

    def __init__(self, dataset: Dataset, teachers: Sequence[str | FeatureCache | Cache], *, view: str | None = None,
                 **kwargs: Any) -> None:
        if view not in VIEW_MODES:
            raise ConfigError(f"view {view!r}: choose None (your sample as it is), 'eval' (the teacher's view) or "
                              "'cached' (one of the cached views per item)")
        self.user = dataset
        self.join = RowJoin(teachers, dataset, **kwargs)
        n = len(dataset)  # type: ignore[arg-type]  # a map-style Dataset has a length (torch does not declare it)
        if n != self.join.num_rows:
            raise CacheMismatchError(f"the dataset has {n} samples but the caches {self.join.num_rows} rows")
        self.view = view
        self.caches = [Cache(c) for c in self.join.caches]
        if view is not None:
            self._check_views(view)

    def _check_views(self, view: str) -> None:
        transforms = {c.transform for c in self.caches}
        if len(transforms) != 1:
            raise CacheMismatchError("view: the caches were extracted with different transforms; one image cannot "
                                     "be every teacher's view")
        if view == "cached":
            specs = {c.view_spec for c in self.caches}
            if None in specs or len(specs) != 1:
                raise ConfigError("view='cached': every cache needs the same cached views (extract with views=K and "
                                  "the same view_policy and seed); view='eval' gives the evaluation view")

    def __len__(self) -> int:
        return self.join.num_rows

    def __getitem__(self, index: int):
        sample = self.user[index]
        sample = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
        if self.view is None:
            joined = self.join.join([index])
            return (*sample, Rows({k: TeacherRow({f: v[0] for f, v in r.items()}) for k, r in joined.items()}))
        first, data = self.caches[0], self.join.dataset
        assert data is not None  # a CachedRows always has its dataset
        k = first.views if self.view == "cached" else 1
        v = int(torch.randint(0, k, ())) if k > 1 else 0  # seeded per DataLoader worker by torch
        image = first.view_image(data.read_image(index), index, v)
        if v == 0:  # the evaluation view: the join's tables (in RAM when they fit)
            rows = {k: {**r, "view": torch.zeros(1, dtype=torch.int64)} for k, r in self.join.join([index]).items()}
        else:
            rows = {name: c.rows([index], view=v) for name, c in zip(self.join.names, self.caches, strict=True)}
        return (image, *sample[1:], Rows({k: TeacherRow({f: x[0] for f, x in r.items()}) for k, r in rows.items()}))
