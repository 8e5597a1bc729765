"""The artifact store contract, held by both stores: the local folder and an S3 bucket (moto's real S3 server,
started by the `s3_server` fixture): keyed, atomic, refuses keys that escape its root, reads never mix versions.

.venv/bin/python -m pytest tests/service/test_service_store.py -q
"""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError
from s3_helpers import ACCESS_KEY, REGION, SECRET_KEY, object_keys, open_multipart_uploads

from service.s3_store import S3Store
from service.store import InvalidKey, LocalStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    return S3Store(
        bucket,
        "deploy/a",
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        multipart_bytes=5 << 20,  # S3's smallest part: a 12 MiB file goes up in 3
    )


def everything(store) -> list[str]:
    """What the store holds, seen from outside it (files in the folder, objects in the bucket)."""
    if isinstance(store, LocalStore):
        return sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file())
    return object_keys(store.client.meta.endpoint_url, store.bucket)


def test_roundtrip_list_and_delete(store):
    store.put_bytes("datasets/d1/img.png", b"png")
    store.put_stream("datasets/d1/sub/cap.txt", iter([b"a ", b"cat"]))
    store.put_bytes("datasets/d10/other.png", b"not under d1")
    assert store.list("datasets/d1") == ["datasets/d1/img.png", "datasets/d1/sub/cap.txt"]
    with store.open("datasets/d1/sub/cap.txt") as f:
        assert f.read() == b"a cat"
    assert store.size("datasets/d1/img.png") == 3 and store.exists("datasets/d1/img.png")
    path = store.local_path("datasets/d1/img.png")
    assert (path is not None) == store.is_local and (path is None or path.read_bytes() == b"png")
    store.delete_prefix("datasets/d1")
    assert store.list("datasets/d1") == [] and not store.exists("datasets/d1/img.png")
    assert store.list("datasets/d10") == ["datasets/d10/other.png"]  # a prefix is a folder, not a string start
    with pytest.raises(FileNotFoundError):
        store.open("datasets/d1/img.png")
    with pytest.raises(FileNotFoundError):
        store.size("datasets/d1/img.png")


def test_put_dir_and_fetch_dir(store, tmp_path):
    src = tmp_path / "peft"
    (src / "x").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "x" / "w.bin").write_bytes(b"\0" * 10)
    assert store.put_dir("loras/l1/peft", src) == ["loras/l1/peft/adapter_config.json", "loras/l1/peft/x/w.bin"]
    assert store.list("loras/l1/peft") == ["loras/l1/peft/adapter_config.json", "loras/l1/peft/x/w.bin"]
    folder = store.fetch_dir("loras/l1/peft", tmp_path / "fetched")
    assert (folder / "x" / "w.bin").read_bytes() == b"\0" * 10
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "adapter_config.json",
        "x/w.bin",
    ]


def test_a_large_file_goes_up_and_comes_back_whole_and_reads_seek(store, tmp_path):
    data = os.urandom(12 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    store.put_file("loras/big/lora.safetensors", tmp_path / "big.bin")
    assert store.size("loras/big/lora.safetensors") == len(data)
    with store.open("loras/big/lora.safetensors") as f:
        assert f.seek(0, 2) == len(data)
        f.seek(7 << 20)
        assert f.read(1000) == data[7 << 20 : (7 << 20) + 1000]
        f.seek(10)
        assert f.read(5) == data[10:15]
        f.seek(0)
        assert f.read() == data
    if isinstance(store, S3Store):
        head = store.client.head_object(Bucket=store.bucket, Key="deploy/a/loras/big/lora.safetensors")
        assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts: a multipart upload
        assert open_multipart_uploads(store.client.meta.endpoint_url, store.bucket) == []


def test_keys_that_escape_are_refused(store, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    for key in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b", "a/b\0c"]:
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"x")
        with pytest.raises(InvalidKey):
            store.put_dir(key, tmp_path / "d")
        with pytest.raises(InvalidKey):
            store.open(key)
    assert everything(store) == []


def test_failed_write_leaves_nothing(store, tmp_path):
    store.put_bytes("k/file.bin", b"old")

    def chunks():
        yield b"new-part"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.put_stream("k/file.bin", chunks())
    assert store.open("k/file.bin").read() == b"old"  # the reader never sees a half-written file
    assert [k.rsplit("/", 1)[-1] for k in everything(store)] == ["file.bin"]  # nothing else left behind


def test_a_reader_never_mixes_two_versions_of_a_key(store):
    """A key overwritten while it is being read: the reader goes on with the old file (a local open file) or
    fails (S3: every ranged read is pinned to the ETag seen at open), never reads the new file's end."""
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    store.put_bytes("images/x.png", old)
    with store.open("images/x.png") as f:
        assert f.read(1 << 20) == old[: 1 << 20]
        store.put_bytes("images/x.png", new)
        f.seek(5 << 19)  # 2.5 MiB: far enough that S3 needs a new ranged GET
        if store.is_local:
            assert f.read() == old[5 << 19 :]
        else:
            with pytest.raises(ClientError, match="PreconditionFailed"):
                f.read()
    assert store.open("images/x.png").read() == new


def test_delete_prefix_of_a_single_key_and_of_nothing(store):
    store.put_bytes("images/a.png", b"a")
    store.put_bytes("images/ab.png", b"ab")
    store.delete_prefix("images/a.png")
    store.delete_prefix("images/none")  # missing is fine
    assert store.list("images") == ["images/ab.png"]
