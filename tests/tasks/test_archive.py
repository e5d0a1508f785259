"""Archive drops: unpacked into staging only; unsafe members reject the whole archive."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from freshtune.errors import DropRejected
from tasks.archive import unpack
from tasks.ingest import read_drop

DATA = "\n".join(json.dumps({"id": str(i), "prompt": "Q?", "response": "A."}) for i in range(3))


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_tar_gz_and_zip_drops_unpack_into_staging(tmp_path: Path):
    staging = tmp_path / "staging"
    tgz = _tar(tmp_path / "drop.tar.gz", [("data/drop.jsonl", DATA.encode()), ("README", b"x")])
    assert len(read_drop(unpack(tgz, staging, 1 << 20))) == 3
    with zipfile.ZipFile(tmp_path / "drop.zip", "w") as z:
        z.writestr("drop.jsonl", DATA)
    out = unpack(tmp_path / "drop.zip", staging, 1 << 20)
    assert out.parent == staging and len(read_drop(out)) == 3


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (("../evil.jsonl", b"{}"), "escapes with '..'"),
        (("/tmp/evil.jsonl", b"{}"), "absolute path"),
        (_link("drop.jsonl", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
        (_link("hard.jsonl", tarfile.LNKTYPE, "drop.jsonl"), "is a hardlink"),
        (_link("dev", tarfile.CHRTYPE, ""), "device"),
    ],
)
def test_unsafe_members_reject_the_archive_and_write_nothing(tmp_path: Path, member, says):
    root = tmp_path / "root"
    root.mkdir()
    archive = _tar(root / "drop.tar", [("ok.jsonl", DATA.encode()), member])
    staging = root / "landing" / "staging"
    with pytest.raises(DropRejected) as err:
        unpack(archive, staging, 1 << 20)
    assert err.value.rule == "archive" and says in str(err.value) and "drop.tar" in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["drop.tar", "root"]


def test_zip_symlink_and_traversal_are_rejected(tmp_path: Path):
    path = tmp_path / "drop.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("drop.jsonl", DATA)
        link = zipfile.ZipInfo("link.jsonl")
        link.external_attr = 0o120777 << 16  # a symlink's mode bits
        z.writestr(link, "/etc/passwd")
    with pytest.raises(DropRejected, match="is a symlink"):
        unpack(path, tmp_path / "staging", 1 << 20)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/../../evil.jsonl", DATA)
    with pytest.raises(DropRejected, match="escapes"):
        unpack(path, tmp_path / "staging", 1 << 20)
    assert not (tmp_path / "staging").exists() and not (tmp_path.parent / "evil.jsonl").exists()


def test_archive_limits_and_shape(tmp_path: Path):
    big = _tar(tmp_path / "big.tar", [("drop.jsonl", b"x" * 5000)])
    with pytest.raises(DropRejected, match="data.max_file_mb"):
        unpack(big, tmp_path / "s", 1000)
    two = _tar(tmp_path / "two.tar", [("a.jsonl", b"{}"), ("b.csv", b"id\n")])
    with pytest.raises(DropRejected, match="holds 2 data files"):
        unpack(two, tmp_path / "s", 1 << 20)


def test_a_zip_bomb_is_refused_by_its_ratio_before_a_byte_is_written(tmp_path: Path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("drop.jsonl", b"\n" * (20 << 20))  # 20 MB of newlines: ~20 KB packed
    with pytest.raises(DropRejected, match="data.max_unpack_ratio=200") as caught:
        unpack(bomb, tmp_path / "s", 1 << 30)
    assert caught.value.rule == "compression" and not (tmp_path / "s").exists()


def test_a_member_larger_than_its_header_says_stops_at_the_declared_size(tmp_path: Path):
    honest = tmp_path / "drop.zip"
    with zipfile.ZipFile(honest, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("drop.jsonl", b"x" * 4096)
    lying = tmp_path / "lying.zip"
    # The central directory claims 16 bytes (both sizes: stored); the data is 4096.
    data = honest.read_bytes()
    size = (4096).to_bytes(4, "little")
    lying.write_bytes(data.replace(size + size, (16).to_bytes(4, "little") * 2))
    with pytest.raises(DropRejected) as caught:
        unpack(lying, tmp_path / "s", 1 << 20)
    assert caught.value.rule in ("compression", "archive")
