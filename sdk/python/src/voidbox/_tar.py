"""Directories to and from tar streams, extracting only what stays inside the target."""

from __future__ import annotations

import os
import posixpath
import tarfile
import tempfile
from typing import IO, AsyncIterator, Iterator, List, Optional, Set, Tuple, Union

from ._errors import UnsafeArchive

__all__ = ["pack_dir", "iter_chunks", "aiter_chunks", "safe_extract", "new_spool"]

CHUNK = 256 * 1024
#: Tars up to this size stay in memory; larger ones spill to a temporary file.
SPOOL_MAX = 16 * 1024 * 1024

PathLike = Union[str, "os.PathLike[str]"]


def new_spool() -> "tempfile.SpooledTemporaryFile[bytes]":
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, mode="w+b")


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tf: tarfile.TarFile, full: str, arcname: str) -> None:
    """One entry: a directory, a file (hard links stored as files, which the agent
    takes) or a symlink; other kinds (sockets, FIFOs, devices) are left out."""
    info = tf.gettarinfo(full, arcname)
    if info is None:
        return
    if info.islnk():
        info.type = tarfile.REGTYPE
        info.linkname = ""
        info.size = os.stat(full).st_size
    _reset_owner(info)
    if info.isreg():
        with open(full, "rb") as f:
            tf.addfile(info, f)
    elif info.isdir() or info.issym():
        tf.addfile(info)


def pack_dir(local_dir: PathLike) -> Tuple["tempfile.SpooledTemporaryFile[bytes]", int]:
    """A tar of what ``local_dir`` holds (names relative to it, symlinks kept as
    links, hard links as plain files, owners cleared; sockets, FIFOs and devices
    left out), rewound, and its size."""
    root = os.fspath(local_dir)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root} is not a directory")
    spool = new_spool()
    try:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, root)
                for name in sorted(dirnames + filenames):
                    full = os.path.join(dirpath, name)
                    arcname = name if rel_dir == "." else posixpath.join(
                        rel_dir.replace(os.sep, "/"), name
                    )
                    _add(tf, full, arcname)
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, size


def iter_chunks(f: IO[bytes], chunk: int = CHUNK) -> Iterator[bytes]:
    while True:
        data = f.read(chunk)
        if not data:
            return
        yield data


async def aiter_chunks(f: IO[bytes], chunk: int = CHUNK) -> AsyncIterator[bytes]:
    while True:
        data = f.read(chunk)
        if not data:
            return
        yield data


def _norm_member(name: str) -> str:
    """An archive name as a relative path without ``.`` parts; refuses escapes."""
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"the archive holds an absolute path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"the archive holds a path leading out of the target: {name!r}")
    return "/".join(parts)


def _prefixes(path: str) -> List[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _inside(dest: str, path: str) -> bool:
    try:
        return os.path.commonpath([dest, path]) == dest
    except ValueError:
        return False


def _check_members(members: List[tarfile.TarInfo], dest: str) -> None:
    links: Set[str] = {
        _norm_member(m.name) for m in members if m.issym() or m.islnk()
    }
    for m in members:
        name = _norm_member(m.name)
        if not name:
            continue
        for prefix in _prefixes(name):
            if prefix in links:
                raise UnsafeArchive(f"the archive writes through the link {prefix!r}: {m.name!r}")
        if not _inside(dest, os.path.realpath(os.path.join(dest, name))):
            raise UnsafeArchive(f"{m.name!r} would be written outside {dest}")
        if m.issym():
            target = m.linkname
            if target.startswith("/"):
                raise UnsafeArchive(f"the archive holds a link to an absolute path: {m.name!r} -> {target!r}")
            stack = name.split("/")[:-1]
            parts = [p for p in target.split("/") if p not in ("", ".")]
            for i, part in enumerate(parts):
                if part == "..":
                    if not stack:
                        raise UnsafeArchive(
                            f"the archive holds a link leading out of the target: {m.name!r} -> {target!r}"
                        )
                    stack.pop()
                    continue
                stack.append(part)
                if i < len(parts) - 1 and "/".join(stack) in links:
                    raise UnsafeArchive(
                        f"the archive holds a link through another link: {m.name!r} -> {target!r}"
                    )
        elif m.islnk():
            target = _norm_member(m.linkname)
            for prefix in _prefixes(target) + [target]:
                if prefix in links:
                    raise UnsafeArchive(
                        f"the archive holds a hard link through a link: {m.name!r} -> {m.linkname!r}"
                    )
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchive(f"the archive holds a special file: {m.name!r}")


def _sanitize(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the 'data' filter does, for Pythons without it."""
    m.mode = m.mode & 0o777
    if m.isfile() or m.islnk():
        m.mode &= 0o755 | 0o600
    m.uid = os.getuid() if hasattr(os, "getuid") else 0
    m.gid = os.getgid() if hasattr(os, "getgid") else 0
    m.uname = m.gname = ""
    return m


def safe_extract(f: IO[bytes], local_dir: PathLike) -> List[str]:
    """Unpacks the tar in ``f`` into ``local_dir`` (created if missing). Refuses
    members and links that would land outside it, and special files; uses the
    'data' filter where Python has it. Answers the member names."""
    dest = os.path.realpath(os.fspath(local_dir))
    os.makedirs(dest, exist_ok=True)
    try:
        tf = tarfile.open(fileobj=f, mode="r:*")
    except tarfile.TarError as e:
        raise UnsafeArchive(f"the daemon sent something that is not a tar: {e}") from e
    with tf:
        members = tf.getmembers()
        _check_members(members, dest)
        data_filter: Optional[object] = getattr(tarfile, "data_filter", None)
        try:
            if data_filter is not None:
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Pythons before the filter backports
                tf.extractall(dest, members=[_sanitize(m) for m in members])
        except tarfile.TarError as e:
            raise UnsafeArchive(f"refused to unpack the archive: {e}") from e
        return [m.name for m in members]
