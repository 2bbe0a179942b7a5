"""Advisory directory locks: one writer per cache (extract, rm) and one process per run directory (distill,
train-teacher).

``flock`` on ``<directory>/.lock``, held for the writer's whole life and released by the kernel when the process
dies (kill -9 included), so a crash never leaves a stale lock. The file holds the holder's pid for messages. POSIX
only; elsewhere locking is a no-op (documented in docs/cache-format.md).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from featcache.errors import FeatcacheError, LockedError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class DirLock:
    """Exclusive advisory lock on ``<directory>/.lock``. ``what`` names the directory in errors ("cache", "run
    directory"); ``error`` is the LockedError subclass raised when another process holds it and ``wait`` is off."""

    error: type[LockedError] = LockedError

    def __init__(self, directory: Path, what: str = "directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> "DirLock":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unwritable(self.directory, exc, self.what) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_pid(self.path)
                if not wait:
                    os.close(fd)
                    raise self.error(self.what, self.directory, holder) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass  # the pid is for messages only; a full disk must not stop a lock that is already held
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


_REASONS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOSPC: "ran out of disk space",
    errno.EDQUOT: "ran out of disk quota",
}


def unwritable(directory: Path, exc: OSError, what: str = "directory") -> FeatcacheError:
    """The one-line error for a directory featcache cannot write: read-only, no permission, full. h5py words its
    errors in its own message, so the errno is also looked for there."""
    code = exc.errno
    if code is None:
        text = str(exc)
        code = next((c for c, name in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system"),
                                       (errno.EACCES, "Permission denied")) if name in text), None)
    reason = _REASONS.get(code, f"cannot be written ({' '.join(str(exc.strerror or exc).split())[:160]})")
    from featcache.errors import StorageError

    again = "add --resume to the same command" if what == "run directory" else "re-run the same command"
    fix = (f"free space, then {again}: it keeps what was finished"
           if code in (errno.ENOSPC, errno.EDQUOT)
           else "choose a writable location (--cache-dir for caches, --run-dir for runs)")
    return StorageError(f"the {what} {directory} {reason}; {fix}")
