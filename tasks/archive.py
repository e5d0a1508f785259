"""Unpack `.tar`, `.tar.gz` and `.zip` drops safely into a staging folder.

Every member is checked before a byte is written: absolute paths, `..`, links and devices
reject the whole archive. Only the one data file is written, by name under the staging folder,
never through `extractall`, so nothing can land outside it.
"""

from __future__ import annotations

import logging
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from freshtune.errors import DropRejected

log = logging.getLogger(__name__)

ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "file", "dir", or what makes it unsafe ("symlink", "hardlink", "device" ...)
    size: int


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVES)


def unpack(path: Path, staging: Path, max_bytes: int, max_ratio: float = 200.0) -> Path:
    """Check every member, then write the archive's one data file into `staging`."""
    members = _members(path)
    for member in members:
        _check_member(path, member)
    total = sum(m.size for m in members)
    if total > max_bytes:
        detail = f"unpacks to {total / 2**20:.1f} MB; data.max_file_mb={max_bytes / 2**20:g}"
        raise DropRejected(path, "size", detail)
    # Text compresses 5-20x; a bomb compresses thousands of times.
    if (ratio := total / max(path.stat().st_size, 1)) > max_ratio:
        detail = f"unpacks {ratio:.0f}x its packed size; data.max_unpack_ratio={max_ratio:g}"
        raise DropRejected(path, "compression", detail)
    data = [m for m in members if m.kind == "file" and m.name.lower().endswith(DATA_SUFFIXES)]
    if len(data) != 1:
        names = [m.name for m in data]
        detail = f"holds {len(data)} data files {names}; put exactly one {DATA_SUFFIXES} per drop"
        raise DropRejected(path, "archive", detail)
    return _write(path, data[0], staging)


def _members(path: Path) -> list[Member]:
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                return [_zip_member(info) for info in archive.infolist()]
        with tarfile.open(path) as archive:
            return [_tar_member(info) for info in archive.getmembers()]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DropRejected(path, "archive", f"cannot read the archive: {exc}") from None


def _tar_member(info: tarfile.TarInfo) -> Member:
    kind = (
        "file"
        if info.isfile()
        else "dir"
        if info.isdir()
        else "symlink"
        if info.issym()
        else "hardlink"
        if info.islnk()
        else "device or fifo"
    )
    return Member(info.name, kind, info.size)


def _zip_member(info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        kind = "symlink"
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
        kind = "device or fifo"
    else:
        kind = "dir" if info.is_dir() else "file"
    return Member(info.filename, kind, info.file_size)


def _check_member(path: Path, member: Member) -> None:
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DropRejected(path, "archive", f"member {member.name!r} has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise DropRejected(path, "archive", f"member {member.name!r} escapes with '..'")
    if member.kind not in ("file", "dir"):
        raise DropRejected(path, "archive", f"member {member.name!r} is a {member.kind}")


def _write(path: Path, member: Member, staging: Path) -> Path:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    target = staging / PurePosixPath(member.name.replace("\\", "/")).name
    if target.resolve().parent != staging.resolve():
        raise DropRejected(path, "archive", f"member {member.name!r} would land outside staging")
    _copy_member(path, member, target)
    log.info("unpacked %s from %s into %s", member.name, path.name, staging)
    return target


def _copy_member(path: Path, member: Member, target: Path) -> None:
    try:
        _copy_data(path, member, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        target.unlink(missing_ok=True)
        detail = f"member {member.name!r} cannot be unpacked: {exc}"
        raise DropRejected(path, "archive", detail) from None
    except DropRejected:
        target.unlink(missing_ok=True)
        raise


def _copy_data(path: Path, member: Member, target: Path) -> None:
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive, archive.open(member.name) as src:
            _copy_at_most(path, src, target, member.size)
        return
    with tarfile.open(path) as archive:
        src = archive.extractfile(member.name)
        if src is None:  # checked above; extractfile returns None only for non-files
            detail = f"member {member.name!r} is not a regular file"
            raise DropRejected(path, "archive", detail)
        with src:
            _copy_at_most(path, src, target, member.size)


def _copy_at_most(path: Path, src: IO[bytes], target: Path, declared: int) -> None:
    """Copy no more than the member declared: a header that lies cannot fill the disk."""
    written = 0
    with target.open("wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > declared:
                detail = f"member unpacks past its declared {declared} bytes"
                raise DropRejected(path, "compression", detail)
            out.write(chunk)
