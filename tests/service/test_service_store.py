"""The local artifact store: keyed, atomic, refuses keys that escape its root.

.venv/bin/python -m pytest tests/service/test_service_store.py -q
"""

from __future__ import annotations

import pytest

from service.store import InvalidKey, LocalStore


def test_roundtrip_list_and_delete(tmp_path):
    store = LocalStore(tmp_path / "a")
    store.put_bytes("datasets/d1/img.png", b"png")
    store.put_stream("datasets/d1/sub/cap.txt", iter([b"a ", b"cat"]))
    assert store.list("datasets/d1") == ["datasets/d1/img.png", "datasets/d1/sub/cap.txt"]
    with store.open("datasets/d1/sub/cap.txt") as f:
        assert f.read() == b"a cat"
    assert store.size("datasets/d1/img.png") == 3 and store.exists("datasets/d1/img.png")
    assert store.local_path("datasets/d1/img.png").read_bytes() == b"png"
    store.delete_prefix("datasets/d1")
    assert store.list("datasets/d1") == [] and not store.exists("datasets/d1/img.png")
    with pytest.raises(FileNotFoundError):
        store.open("datasets/d1/img.png")


def test_put_dir_and_fetch_dir(tmp_path):
    src = tmp_path / "peft"
    (src / "x").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "x" / "w.bin").write_bytes(b"\0" * 10)
    store = LocalStore(tmp_path / "store")
    assert store.put_dir("loras/l1/peft", src) == ["loras/l1/peft/adapter_config.json", "loras/l1/peft/x/w.bin"]
    folder = store.fetch_dir("loras/l1/peft", tmp_path / "unused")
    assert (folder / "x" / "w.bin").read_bytes() == b"\0" * 10


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b", "a/b\0c"])
def test_keys_that_escape_are_refused(tmp_path, key):
    store = LocalStore(tmp_path)
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    assert list(tmp_path.rglob("*")) == []


def test_failed_write_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("k/file.bin", b"old")

    def chunks():
        yield b"new-part"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.put_stream("k/file.bin", chunks())
    assert store.open("k/file.bin").read() == b"old"  # the reader never sees a half-written file
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["file.bin"]  # no temp file left behind
