"""The tar of `featcache cache export`, written and read strictly (featcache.cache.archive says what it holds).

Only what featcache's own archives use is read: regular files, each after at most one pax header carrying ``path``
(a name over 100 characters), ``size`` (over 8 GiB) or ``mtime``. Links, devices, fifos, directories, GNU and global
headers, and data after the end-of-archive marker are refused, each naming the member, before anything is written.
"""

from __future__ import annotations

import tarfile

from featcache.errors import CacheError

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MAX_PAX = 64 * 2**10
_PAX_KEYS = ("path", "size", "mtime")  # what tarfile's pax format writes for our members; anything else is refused
_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
          tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo", tarfile.DIRTYPE: "a directory"}


def padding(size: int) -> int:
    """Zero bytes after a member's data, to the next 512-byte block."""
    return -size % BLOCK


def header(name: str, size: int, mtime: float) -> bytes:
    """The header of a regular file member (pax only when a field does not fit ustar), owned by nobody in particular."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, int(mtime), 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class TarReader:
    """The members of a tar stream, read strictly: regular files only, at most one pax header before each."""

    def __init__(self, raw, where: str) -> None:
        self._raw, self.where = raw, where

    def refused(self, why: str) -> CacheError:
        return CacheError(f"archive {self.where}: {why}; nothing was imported (copy it again, or export it anew)")

    def truncated(self, what: str) -> CacheError:
        return CacheError(f"archive {self.where} is truncated (it ends inside {what}); nothing was imported: copy "
                          "it again")

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._raw.readinto(buf) or 0
        except OSError as exc:
            raise CacheError(f"archive {self.where} cannot be read ({exc.strerror or exc})") from None

    def read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.readinto(view[got:])
            if not k:
                raise self.truncated(what)
            got += k
        return bytes(buf)

    def next_member(self, expected: str) -> tuple[str, int] | None:
        """(name, size) of the next member; None at the end-of-archive marker (a zero block)."""
        block = self.read_exact(BLOCK, f"the header of {expected}")
        if block.count(0) == BLOCK:
            return None
        info, pax = self._header(block), {}
        if info.type == tarfile.XHDTYPE:
            if info.size > MAX_PAX:
                raise self.refused(f"a pax header of {info.size:,} bytes precedes {expected}")
            pax = self._pax(self.read_exact(info.size + padding(info.size), f"the header of {expected}")[:info.size])
            info = self._header(self.read_exact(BLOCK, f"the header of {expected}"))
        name = pax.get("path", info.name)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = _KINDS.get(info.type, f"a tar member of type {info.type!r}")
            raise self.refused(f"member {name!r} is {kind}; a featcache archive holds regular files only")
        return name, int(pax["size"]) if "size" in pax else info.size

    def expect_member(self, name: str, size: int) -> None:
        got = self.next_member(name)
        if got is None:
            raise self.refused(f"it ends before {name}, which its index lists")
        if got[0] != name:
            raise self.refused(f"member {got[0]!r} is not the one its index lists next ({name})")
        if got[1] != size:
            raise self.refused(f"member {name} is {got[1]:,} bytes, its index says {size:,}")

    def expect_end(self) -> None:
        """Two zero blocks after the last listed member, then nothing but zeros to the end of the record."""
        got = self.next_member("the end-of-archive marker")
        if got is not None:
            raise self.refused(f"member {got[0]!r} is not listed in its index")
        if self.read_exact(BLOCK, "the end-of-archive marker").count(0) != BLOCK:
            raise self.refused("its end-of-archive marker is damaged")
        rest = bytearray(RECORD + 1)
        view, filled = memoryview(rest), 0
        while filled <= RECORD and (k := self.readinto(view[filled:])):
            filled += k
        if filled > RECORD or rest.count(0) != len(rest):
            raise self.refused("data follows its end-of-archive marker")

    def _header(self, block: bytes) -> tarfile.TarInfo:
        if block.count(0) == BLOCK:
            raise self.refused("a pax header is not followed by its member")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, ValueError) as exc:
            raise self.refused(f"a tar header is damaged ({exc})") from None
        if info.size < 0:  # base-256 numbers can be negative; tarfile does not refuse them
            raise self.refused(f"a tar header gives a negative size ({info.size})")
        return info

    def _pax(self, data: bytes) -> dict[str, str]:
        """The records ``LEN key=value\\n`` of a pax header; only the keys featcache's own archives use."""
        out, pos = {}, 0
        while pos < len(data):
            digits, sp, _ = data[pos:pos + 20].partition(b" ")
            end = pos + int(digits) if sp and digits.isdigit() else -1
            if end <= pos + len(digits) + 1 or end > len(data) or data[end - 1:end] != b"\n":
                raise self.refused("a pax header is damaged")
            key, eq, value = data[pos + len(digits) + 1:end - 1].partition(b"=")
            if not eq or key.decode("ascii", "replace") not in _PAX_KEYS:
                raise self.refused(f"a pax header holds {key[:40]!r}, which featcache archives never use")
            out[key.decode()] = value.decode("utf-8", "replace")
            pos = end
        # ASCII digits only, and few of them: str.isdigit() also accepts "²" and "٣", which int() then rejects
        if "size" in out and not (out["size"].isascii() and out["size"].isdigit() and len(out["size"]) <= 20):
            raise self.refused(f"a pax header gives no valid size ({out['size'][:40]!r})")
        return out
