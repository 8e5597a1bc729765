"""core.atomic_files: a target is written whole or not at all, and no temporary is left behind either way."""

import os
import stat

import pytest

from core.atomic_files import atomic_dir, atomic_file


def test_a_file_appears_whole_with_its_mode(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_file(target, mode=0o644) as tmp:
        tmp.write_bytes(b"partial")
        assert not target.exists()  # readers see nothing until the rename
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_replaces_an_old_one_only_when_asked(tmp_path):
    target = tmp_path / "step-1"
    target.mkdir()
    (target / "stale").write_text("old")
    with pytest.raises(OSError):
        with atomic_dir(target) as tmp:
            (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["stale"]
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_folder_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
            raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []
