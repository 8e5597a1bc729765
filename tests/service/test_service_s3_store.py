"""What only the S3 store does (against moto's real S3 server): a folder's manifest written last and checked on
read, content ids from sha256 metadata, the store chosen by O1LORA_STORE_URL, boto3 imported only for it.

.venv/bin/python -m pytest tests/service/test_service_s3_store.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from s3_helpers import client, object_keys, store_settings

from service.s3_store import MANIFEST, S3Store
from service.settings import Settings
from service.store import LocalStore
from service.stores import make_store


@pytest.fixture
def store(s3_server, s3_bucket, tmp_path):
    return make_store(Settings(data_dir=tmp_path / "data", **store_settings(s3_server, s3_bucket, "p")))


def folder(tmp_path, files: dict[str, bytes]):
    root = tmp_path / "src"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_settings_pick_the_store_and_the_bucket_prefix(store, s3_server, s3_bucket, tmp_path):
    assert isinstance(store, S3Store) and (store.bucket, store.prefix) == (s3_bucket, "p")
    store.put_bytes("images/a.png", b"a")
    assert object_keys(s3_server, s3_bucket) == ["p/images/a.png"]
    assert isinstance(make_store(Settings(data_dir=tmp_path / "d")), LocalStore)  # the embedded default
    store.check()  # the bucket answers


@pytest.mark.parametrize("url", ["s3:/x", "http://bucket/p", "s3://", "s3://UPPER/p", "s3://b/p", "s3://bkt/a//b"])
def test_a_bad_store_url_is_refused_at_start_naming_the_variable(url):
    with pytest.raises(ValidationError, match="O1LORA_STORE_URL must read s3://bucket"):
        Settings(store_url=url)


def test_a_placeholder_s3_secret_is_refused_in_production():
    with pytest.raises(ValidationError, match="O1LORA_S3_SECRET_ACCESS_KEY is a placeholder"):
        Settings(env="production", store_url="s3://bkt", s3_secret_access_key="minioadmin")
    assert Settings(store_url="s3://bkt", s3_secret_access_key="minioadmin").store_location == ("bkt", "")


def test_the_local_default_never_imports_boto3(tmp_path):
    code = (
        "import sys; from service.settings import Settings; from service.stores import make_store; "
        "import service.store_cache; "
        f"make_store(Settings(data_dir={str(tmp_path)!r})).put_bytes('a/b', b'x'); "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path.parent, env=env)


def test_put_dir_writes_the_manifest_last_with_every_files_size_and_sha256(store, tmp_path):
    puts: list[str] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: puts.append(params["Key"])
    )
    src = folder(tmp_path, {"weights.safetensors": b"w" * 100, "state.pt": b"s" * 7, "sub/x.txt": b""})
    store.put_dir("ckpt/step-000004", src)
    assert puts[-1] == f"p/ckpt/step-000004/{MANIFEST}" and len(puts) == 4  # written after every file
    manifest = store.manifest("ckpt/step-000004")
    assert manifest["files"]["weights.safetensors"]["size"] == 100
    assert manifest["files"]["state.pt"]["sha256"] == hashlib.sha256(b"s" * 7).hexdigest()
    assert sorted(manifest["files"]) == ["state.pt", "sub/x.txt", "weights.safetensors"]
    assert store.list("ckpt/step-000004") == [  # the manifest is the store's, not one of the folder's files
        "ckpt/step-000004/state.pt",
        "ckpt/step-000004/sub/x.txt",
        "ckpt/step-000004/weights.safetensors",
    ]


def test_a_put_dir_that_fails_midway_leaves_no_manifest(store, tmp_path):
    """A connection lost during the third upload: the folder never gets its manifest (and the callers, the
    dataset upload and the checkpoint callback, never write a row pointing at it)."""
    store.parallel = 1  # uploads in order, so that "the third" is well defined
    seen = []

    def fail_third(params, **_):
        seen.append(params["Key"])
        if len(seen) == 3:
            raise ConnectionError("network gone")

    store.client.meta.events.register("before-parameter-build.s3.PutObject", fail_third)
    src = folder(tmp_path, {f"img_{i}.png": bytes([i]) * 10 for i in range(5)})
    with pytest.raises(Exception, match="network gone"):
        store.put_dir("datasets/d1", src)
    assert store.manifest("datasets/d1") is None
    assert not any(k.endswith(MANIFEST) for k in object_keys(store.client.meta.endpoint_url, store.bucket))


def test_fetch_dir_takes_exactly_the_manifests_files_and_checks_them(store, tmp_path):
    src = folder(tmp_path, {"adapter_config.json": b"{}", "adapter_model.safetensors": b"m" * 50})
    store.put_dir("loras/l1/peft", src)
    # An object a dead writer left beside the folder is not part of it.
    store.put_bytes("loras/l1/peft/stray.bin", b"stray")
    got = store.fetch_dir("loras/l1/peft", tmp_path / "out")
    assert sorted(p.name for p in got.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # A file that no longer holds what the manifest says is refused, not handed to a training.
    store.put_bytes("loras/l1/peft/adapter_model.safetensors", b"x" * 50)
    with pytest.raises(OSError, match="does not match its folder's manifest"):
        store.fetch_dir("loras/l1/peft", tmp_path / "out2")


def test_delete_prefix_removes_the_manifest_with_the_folder(store, s3_server, s3_bucket, tmp_path):
    store.put_dir("datasets/d1", folder(tmp_path, {f"f{i}.txt": b"x" for i in range(3)}))
    store.put_bytes("datasets/d10/keep.txt", b"k")
    store.delete_prefix("datasets/d1")
    assert object_keys(s3_server, s3_bucket) == ["p/datasets/d10/keep.txt"]


def test_content_ids_name_the_bytes(store, tmp_path):
    store.put_bytes("a/x.bin", b"same")
    store.put_file("b/y.bin", folder(tmp_path, {"y.bin": b"same"}) / "y.bin")
    assert store.content_id("a/x.bin") == store.content_id("b/y.bin")  # sha256 metadata, however written
    before = store.content_id("a/x.bin")
    store.put_bytes("a/x.bin", b"other")
    assert store.content_id("a/x.bin") != before
    # An object written by another tool (no sha256 metadata) is named by its ETag and size.
    client(store.client.meta.endpoint_url).put_object(Bucket=store.bucket, Key="p/c/z.bin", Body=b"zz")
    assert store.content_id("c/z.bin").startswith("etag-")
    with pytest.raises(FileNotFoundError):
        store.content_id("c/none.bin")

    store.put_dir("d/one", folder(tmp_path / "1", {"a.txt": b"1"}))
    store.put_dir("d/two", folder(tmp_path / "2", {"a.txt": b"1"}))
    assert store.dir_content_id("d/one") == store.dir_content_id("d/two")
    store.put_dir("d/two", folder(tmp_path / "3", {"a.txt": b"2"}))
    assert store.dir_content_id("d/one") != store.dir_content_id("d/two")
    with pytest.raises(FileNotFoundError):
        store.dir_content_id("d/none")
    assert json.loads(store.open(f"d/one/{MANIFEST}").read())["files"]["a.txt"]["size"] == 1
