"""Advisory directory locks: one writer per cache (extract, rm) and one process per run directory (distill,
train-teacher).

``flock`` on ``<directory>/.lock`` (or another lock file), held for the writer's whole life and released by the kernel
when the process dies (kill -9 included). ``flock`` alone is not enough where directories are shared between machines:
some network file systems do not pass it on (or refuse it: ENOLCK). So the file also says who holds it — ``<pid>
<host>`` — and a daemon thread refreshes its modification time every HEARTBEAT seconds; release empties it. Another
host's entry younger than REMOTE_STALE seconds is a live holder (wait, or refuse with --no-wait); an older one was left
by a process that died there, and is reported with what to do (or, where the caller can take over safely, replaced).
Elsewhere than POSIX, locking is a no-op (documented in docs/cache-format.md).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from featcache.errors import FeatcacheError, LockedError
from featcache.util.fileio import read_regular, unwritable

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
HEARTBEAT = 30.0  # seconds between refreshes of a held lock's modification time
REMOTE_STALE = 600.0  # another host's lock not refreshed for this long was left by a process that died there


class StaleLockError(FeatcacheError):
    """A lock left by a process on another host that stopped refreshing it."""


def this_host() -> str:
    return socket.gethostname() or "localhost"


class DirLock:
    """Exclusive advisory lock on ``<directory>/.lock`` (or ``path``). ``what`` names the directory in errors ("cache",
    "run directory"); ``error`` is the LockedError subclass raised when another process holds it and ``wait`` is off.
    ``take_over_stale``: a lock another host left behind is replaced (with a message) instead of refused."""

    error: type[LockedError] = LockedError

    def __init__(self, directory: Path, what: str = "directory", path: Path | None = None,
                 take_over_stale: bool = False) -> None:
        self.directory = Path(directory)
        self.path = Path(path) if path is not None else self.directory / LOCK_FILE
        self.what = what
        self.take_over_stale = take_over_stale
        self._fd: int | None = None
        self._stop: threading.Event | None = None

    def acquire(self, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> "DirLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Never through a link nor into a FIFO planted as the lock: it is truncated and written below.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _not_a_lock(self.path) from None
            raise unwritable(self.directory, exc, self.what) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _not_a_lock(self.path)
            self._flock(fd, wait, on_wait)
            self._check_remote(wait, on_wait)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {this_host()}".encode())
        except OSError:
            pass  # the holder is for messages and other hosts; a full disk must not stop a lock that is held
        self._fd = fd
        self._stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(self.path, self._stop), daemon=True).start()
        return self

    def _flock(self, fd: int, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_pid(self.path)
            if not wait:
                raise self.error(self.what, self.directory, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock (ENOLCK): the holder line and heartbeat still work
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise

    def _check_remote(self, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        """Another host's live entry (flock does not reach us from there): wait for it or refuse; a stale one:
        take over or refuse with what to do."""
        told = False
        while True:
            pid, host, age = _holder(self.path)
            if not host or host == this_host():
                return  # free, or left by a process of this host (its flock is gone with it)
            if age >= REMOTE_STALE:
                if self.take_over_stale:
                    return
                raise StaleLockError(
                    f"{self.path} was left by pid {pid} on host {host} (not refreshed for {age / 60:.0f} min): if no "
                    f"featcache runs there any more, delete {self.path} and re-run")
            if not wait:
                raise self.error(self.what, self.directory, f"{pid} on host {host}")
            if on_wait is not None and not told:
                on_wait(f"{pid} on host {host}")
                told = True
            time.sleep(min(5.0, HEARTBEAT))

    def release(self) -> None:
        if self._fd is not None:
            if self._stop is not None:
                self._stop.set()
            try:
                os.ftruncate(self._fd, 0)  # empty = free, for hosts that cannot see our flock
            except OSError:
                pass
            if fcntl is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _not_a_lock(path: Path) -> FeatcacheError:
    from featcache.errors import StorageError

    return StorageError(f"{path} is a symbolic link or not a regular file, not a lock featcache "
                        "wrote; it is never written through: remove it, then re-run")


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            os.utime(path)
        except OSError:
            pass


def _holder(path: Path) -> tuple[str, str, float]:
    """(pid, host, seconds since the last refresh) of a lock file's holder line; host '' when it is empty."""
    try:
        text = read_regular(path, 512).decode("utf-8", "replace").split()  # never blocks on a planted FIFO
        age = time.time() - path.stat().st_mtime
    except OSError:
        return "", "", 0.0
    if len(text) < 2:
        return (text[0] if text else ""), "", age
    return text[0], text[1], age


def holder(directory: Path, path: Path | None = None) -> str | None:
    """Who holds ``<directory>/.lock`` (or ``path``) now, as :func:`read_pid` words it, or None when nobody does —
    without taking the lock and without creating anything (the directory may be read-only, or someone else's).

    An empty file was released. Another host's entry is live while it is refreshed (REMOTE_STALE). An entry of this
    host is probed with a shared, non-blocking ``flock`` released at once: it fails only while a process holds the
    lock (a process killed with -9 leaves its line behind, but not its flock). Where flock is missing, whether that
    pid is alive decides."""
    path = Path(path) if path is not None else Path(directory) / LOCK_FILE
    pid, host, age = _holder(path)
    if not pid:
        return None
    if host and host != this_host():
        return f"{pid} on host {host}" if age < REMOTE_STALE else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    except BlockingIOError:
        return pid
    except OSError:  # no flock on this file system (ENOLCK): the pid's process decides
        pass
    finally:
        os.close(fd)
    return pid if _alive(pid) else None


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # another user's live process
    except (OSError, ValueError, OverflowError):
        return False
    return True


def read_pid(path: Path) -> str:
    """The holder for messages: ``123`` (this host) or ``123 on host gpu7``."""
    pid, host, _ = _holder(path)
    if not pid:
        return "unknown"
    return pid if not host or host == this_host() else f"{pid} on host {host}"
