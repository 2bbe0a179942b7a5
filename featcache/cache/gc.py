"""`featcache cache gc`: keep one writable store under a size budget, free what nobody uses, clean what crashes left.

The caches of the store are taken least recently used first. A cache's last use is the personal index's record
(``.usage/<key>``, featcache.cache.usage); a cache never recorded counts from its manifest's ``finished`` time (else
its directory's mtime). Walking that order, a cache is removed while it is unused for longer than ``unused_for``,
or while the store is over ``max_size``; both stop at the first cache that is neither (every later one is more
recent). A cache is never removed while a reader leases it, while its extract holds its lock, or when a newer
featcache wrote it: it is skipped, and said. Removal is `cache rm`'s (CacheStore.remove: lock, then the lease
protocol of featcache.cache.leases).

Before that, gc cleans what a crash leaves: incoming directories of dead writers (install.stale_incoming), leases of
dead readers and the trash of dead removers (leases.stale_leases / stale_trash). Other people write to a shared store:
gc never follows a link out of it (a link is removed as a link; sizes are counted without following links), and one
entry it cannot remove is reported and left, never the end of the run. Standard library only.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from featcache.cache.install import INCOMING, disk_bytes, is_real_dir, stale_incoming
from featcache.cache.leases import (
    LEASES,
    TRASH,
    CacheInUseError,
    clean_trash,
    drop_files,
    live_readers,
    stale_leases,
    stale_trash,
)
from featcache.cache.store import CacheEntry, CacheStore
from featcache.cache.usage import check_writable, usage_times
from featcache.errors import CacheLockedError, ConfigError, FeatcacheError
from featcache.util.fileio import printable, remove_tree

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_duration(text: str, flag: str = "--unused-for") -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{flag} {text!r}: expected a duration such as 30d, 12h or 90m", flag=flag)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str, flag: str = "--max-size") -> int:
    """'200G', '512M', '1.5T', '0' -> bytes (binary units, as --cache-ram; without importing torch)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 200G or 512M", flag=flag)
    return int(float(m.group(1)) * _SIZES[m.group(2)])


def human_age(seconds: float) -> str:
    """'40 s', '12 min', '5 h', '3 d' (whole units, rounded down)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@dataclass
class Candidate:
    """A cache of the store as gc sees it: its bytes on disk and its last use."""

    entry: CacheEntry
    bytes: int
    used: float
    recorded: bool  # False: ``used`` is the manifest's finished time or the directory's mtime
    keep: str = ""  # why gc never removes it ("" = it may)

    @property
    def key(self) -> str:
        return self.entry.key


@dataclass
class Step:
    """What gc did (or, dry, would do) with one cache: ``action`` is removed, would remove or skipped."""

    candidate: Candidate
    reason: str
    action: str
    detail: str = ""


@dataclass
class Left:
    """A leftover gc could not remove: what it is and why (it is left as it is; the next gc tries again)."""

    text: str


@dataclass
class GcReport:
    total: int  # bytes of the store's caches before
    remaining: int  # ... after (dry run: what it would be)
    steps: list[Step] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # stale incoming directories, leases and trash
    left: list[str] = field(default_factory=list)  # leftovers that could not be removed

    @property
    def freed(self) -> int:
        return self.total - self.remaining


def _fallback_time(entry: CacheEntry) -> float:
    finished = entry.manifest.finished if entry.manifest is not None else ""
    try:
        return _dt.datetime.fromisoformat(finished).timestamp()
    except (TypeError, ValueError):
        try:
            return entry.directory.stat().st_mtime
        except OSError:
            return 0.0


def candidates(store: CacheStore) -> list[Candidate]:
    """Every cache of the personal store, least recently used first. An entry that is a link is not this store's
    (its bytes are elsewhere): listed with 0 bytes, and never removed by gc."""
    uses = usage_times(store)
    out = []
    for e in store.entries(layers=[store.root]):
        used = uses.get(e.key)
        keep = ("a symbolic link, not a cache directory of this store (`featcache cache rm` removes the link, nothing "
                "it points to)" if os.path.islink(e.directory) else "written by a newer featcache" if e.newer else "")
        out.append(Candidate(e, disk_bytes(e.directory), used if used is not None else _fallback_time(e),
                             used is not None, keep))
    return sorted(out, key=lambda c: (c.used, c.key))


def clean_crashes(store: Path, dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Remove what dead processes left in ``store``: returns (one line per thing removed — dry: what would be —,
    one line per thing that could not be removed and is left)."""
    cleaned: list[str] = []
    left: list[str] = []

    def clean(line: str, remove: Callable[[], str | None]) -> None:
        if dry_run:
            cleaned.append(line)
            return
        try:
            outcome = remove()
        except (OSError, FeatcacheError) as exc:  # one bad entry never stops gc: said, and left for next time
            left.append(f"{line}: not removed ({printable(str(exc), 200)})")
            return
        cleaned.append(f"{line}: {outcome}" if outcome else line)

    for name in (INCOMING, TRASH, LEASES):  # featcache's own names: a link or a file there was planted
        path = Path(store) / name
        if os.path.lexists(path) and not is_real_dir(path):
            clean(f"{name}, a link or a file where featcache keeps a directory (removed itself, nothing it points to)",
                  functools.partial(remove_tree, path))
    for d in stale_incoming(store):
        clean(f"incoming directory {printable(d.name)} of a writer that is gone", functools.partial(remove_tree, d))
    for p in stale_leases(store):
        clean(f"lease {printable(p.parent.name)}/{printable(p.name)} of a process that is gone",
              functools.partial(drop_files, [p]))
    for t in stale_trash(store):
        clean(f"trash {printable(t.name)} of a removal that was interrupted", functools.partial(clean_trash, t))
    return cleaned, left


def _try_remove(store: CacheStore, c: Candidate, dry_run: bool) -> tuple[str, str]:
    """(action, detail) for one chosen cache."""
    if c.keep:
        return "skipped", c.keep
    if dry_run:
        readers = live_readers(c.entry.store, c.key)
        if readers:
            return "skipped", f"being read by {readers[0].describe()}"
        return "would remove", ""
    try:
        store.remove(c.key)
    except CacheInUseError as exc:
        return "skipped", f"being read by {exc.holders[0].describe()}"
    except CacheLockedError as exc:
        return "skipped", f"being written by pid {exc.holder} (its extract holds the lock)"
    except (FeatcacheError, OSError) as exc:  # gone meanwhile (another gc, a `cache rm`), or cannot be removed
        return "skipped", printable(str(exc), 300)
    return "removed", ""


def collect(store: CacheStore, max_size: int | None = None, unused_for: float | None = None, dry_run: bool = False,
            now: float | None = None, on_step: Callable[[Step | Left | str], None] | None = None) -> GcReport:
    """Clean crashes' leftovers, then remove least recently used caches of ``store.root`` until it holds at most
    ``max_size`` bytes, and every cache unused for longer than ``unused_for`` seconds (None: no such limit).
    ``on_step`` hears of each thing as it is done: a line (a leftover cleaned), a Left (one that could not be) or a
    Step."""
    now = time.time() if now is None else now
    if not dry_run and os.path.lexists(store.root):
        check_writable(store.root, "cache gc")  # as root too: a store marked read-only is left as it is
    cleaned, left = clean_crashes(store.root, dry_run)
    if on_step is not None:
        for line in cleaned:
            on_step(line)
        for line in left:
            on_step(Left(line))
    cands = candidates(store)
    total = sum(c.bytes for c in cands)
    report = GcReport(total, total, cleaned=cleaned, left=left)
    for c in cands:
        if unused_for is not None and now - c.used > unused_for:
            reason = f"unused for {human_age(now - c.used)}"
        elif max_size is not None and report.remaining > max_size:
            reason = "over the size budget"
        else:
            break  # every later cache was used more recently
        action, detail = _try_remove(store, c, dry_run)
        if action != "skipped":
            report.remaining -= c.bytes
        step = Step(c, reason, action, detail)
        report.steps.append(step)
        if on_step is not None:
            on_step(step)
    return report
