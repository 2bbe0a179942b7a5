"""Files featcache reads and writes on behalf of a user, when another user may have written (or planted) them.

* ``loads_json``: JSON whose nesting is bounded: a file nested 100k deep is a ValueError like any other malformed
  JSON (Python's parser would raise RecursionError, which nobody's ``except ValueError`` catches).
* ``write_atomic`` / ``write_text_atomic``: an output is written to a fresh temporary file created exclusively
  (O_EXCL, random name) next to its target, flushed and renamed over it. A link planted at ``PATH.tmp`` is never
  written through; a target that exists and is not a regular file (a FIFO, a device, a directory, a link) is refused
  in one line rather than replaced.
* ``printable``: a name or text from disk made safe to print: control characters (terminal escapes, newlines) are
  shown escaped, never sent to the terminal.
* ``remove_tree`` / ``read_regular``: what a store-maintenance command deletes or reads in a directory others write
  to: a link is removed as a link (never followed out), a FIFO is never read.

Standard library only: ``cache ls`` and the store commands import it without torch.
"""
from __future__ import annotations

import errno
import io
import itertools
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from featcache.errors import StorageError

TMP_SUFFIX = ".tmp"  # every temporary file featcache writes ends so (a kill -9 may leave one; nothing reads them)
MAX_JSON_DEPTH = 64  # deeper than any file featcache writes (manifests nest 5 levels)


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` with nesting bounded by MAX_JSON_DEPTH: deeper input raises ValueError (checked in one linear
    pass over the brackets before parsing, so the parser never recurses past the bound)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    _check_depth(text)
    try:
        return json.loads(text)
    except RecursionError:  # defensive: _check_depth should have caught it
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a JSON string (brackets inside it do not nest)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _check_depth(text: str) -> None:
    """Raise ValueError when brackets outside strings nest deeper than MAX_JSON_DEPTH. Regex and itertools run in C:
    a 60 MiB file is checked in well under a second, where a Python loop over characters took ~10 s."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return  # fast path: too few brackets to nest that deep
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if brackets and max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels: not a file featcache wrote")


def read_json(path: Path | str, limit: int | None = None) -> Any:
    """A JSON value from ``path`` (at most ``limit`` characters read when given); OSError and ValueError as usual."""
    with open(path, encoding="utf-8") as f:
        text = f.read() if limit is None else f.read(limit)
    return loads_json(text)


def check_output_target(path: Path, flag: str = "output") -> None:
    """Refuse (one line) a target that exists and is not a regular file: it is never replaced or written through."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"{flag} {path}: cannot be checked ({exc.strerror or exc}); choose another path") from None
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
    raise StorageError(f"{flag} {printable(str(path))} is {kind}, not a regular file; featcache only replaces regular "
                       "files: name another path")


@contextmanager
def exclusive_temp(path: Path, flag: str = "output", mode: int | None = None,
                   what: str = "directory") -> Iterator[io.BufferedWriter]:
    """A new temporary file next to ``path`` opened for binary writing; on a clean exit it is flushed, fsynced and
    renamed over ``path`` (and the directory fsynced); on any error it is removed and ``path`` is untouched. ``flag``
    names the target in errors; ``what`` names its folder when that cannot be written (read-only, full).
    ``mode`` sets the file's permission bits explicitly (else 0o666 minus the umask, like ``open``)."""
    path = Path(path)
    check_output_target(path, flag)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc, what) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_output_target(path, flag)  # planted while we wrote: still refused
        os.replace(tmp, path)
    except BaseException as exc:
        _drop(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise _unwritable(path, exc, what) from None
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | Callable[[IO[bytes]], None], flag: str = "output",
                 mode: int | None = None, what: str = "directory") -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to the open file) through ``exclusive_temp``."""
    with exclusive_temp(Path(path), flag, mode, what) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)


def write_text_atomic(path: Path, text: str, flag: str = "output", mode: int | None = None,
                      what: str = "directory") -> None:
    write_atomic(path, text.encode("utf-8"), flag, mode, what)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power loss (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_regular(path: Path | str, limit: int, whole: bool = False) -> bytes:
    """At most ``limit`` bytes of ``path`` when it is a regular file; OSError otherwise. Never follows a link at
    ``path`` and never blocks on a FIFO or a device someone planted where a small file of ours should be. ``whole``:
    a file longer than ``limit`` is a ValueError rather than cut."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks, left = [], limit + 1 if whole else limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 24))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if whole and len(data) > limit:
            raise ValueError(f"larger than {limit} bytes: not a file featcache wrote")
        return data
    finally:
        os.close(fd)


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` without following a link anywhere: a link (to anything) or a file is unlinked, a directory is
    removed with its content (``shutil.rmtree`` works on file descriptors here: an inner link is unlinked, never
    entered). Nothing outside ``path`` is ever deleted. OSError as usual; a missing ``path`` is no error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def current_umask() -> int:
    """The process umask, read without changing it (explicit modes start from it)."""
    return _umask()


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` from disk made safe for a terminal: control and non-printable characters escaped (an ESC sequence or
    a newline in another user's directory name is shown, not obeyed), cut to ``limit`` characters."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _ESCAPES.get(ch, ch.encode("unicode_escape").decode("ascii"))
                   for ch in text)


def _umask() -> int:
    """The process umask, read without changing it (os.umask's set-and-restore races with other threads' files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _drop(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


_REASONS: dict[int | None, str] = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOSPC: "ran out of disk space",
    errno.EDQUOT: "ran out of disk quota",
}


def unwritable(directory: Path, exc: OSError, what: str = "directory") -> StorageError:
    """The one-line error for a directory featcache cannot write: read-only, no permission, full. h5py words its
    errors in its own message, so the errno is also looked for there."""
    code = exc.errno
    if code is None:
        text = str(exc)
        code = next((c for c, name in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system"),
                                       (errno.EACCES, "Permission denied")) if name in text), None)
    reason = _REASONS.get(code, f"cannot be written ({' '.join(str(exc.strerror or exc).split())[:160]})")
    again = "add --resume to the same command" if what == "run directory" else "re-run the same command"
    fix = (f"free space, then {again}: it keeps what was finished"
           if code in (errno.ENOSPC, errno.EDQUOT)
           else "choose a writable location (--cache-dir for caches, --run-dir for runs)")
    return StorageError(f"the {what} {directory} {reason}; {fix}")


def _unwritable(path: Path, exc: OSError, what: str) -> StorageError:
    return unwritable(path.parent, exc, what)
