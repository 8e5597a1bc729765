"""A worker's read-through cache of a remote store (against moto's real S3 server): each content fetched once
per machine, keyed by content, shared by processes, trimmed least recently used first; nothing copied from a
local store.

.venv/bin/python -m pytest tests/service/test_service_store_cache.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_helpers import store_settings

from service.settings import Settings
from service.store import LocalStore
from service.store_cache import StoreCache
from service.stores import make_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(s3_server, s3_bucket, tmp_path):
    return make_store(Settings(data_dir=tmp_path / "data", **store_settings(s3_server, s3_bucket)))


def count_gets(store) -> list[str]:
    """The keys of every GetObject the store's client sends from now on."""
    gets: list[str] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"])
    )
    return gets


def test_a_file_is_fetched_once_and_keyed_by_its_content(store, tmp_path):
    store.put_bytes("loras/a/lora.safetensors", b"A" * 1000)
    store.put_bytes("loras/b/lora.safetensors", b"A" * 1000)  # the same bytes under another key
    gets = count_gets(store)
    cache = StoreCache(store, tmp_path / "cache")
    first = cache.file("loras/a/lora.safetensors")
    assert first.read_bytes() == b"A" * 1000 and first.name == "lora.safetensors"
    assert cache.file("loras/a/lora.safetensors") == first
    assert cache.file("loras/b/lora.safetensors") == first
    assert len(gets) == 1  # one download for three reads of one content
    # Another process on the machine (a second worker, a DDP rank) finds it too.
    assert StoreCache(store, tmp_path / "cache").file("loras/b/lora.safetensors") == first and len(gets) == 1

    store.put_bytes("loras/a/lora.safetensors", b"B" * 1000)  # rewritten: new content, new copy
    second = cache.file("loras/a/lora.safetensors")
    assert second != first and second.read_bytes() == b"B" * 1000 and first.read_bytes() == b"A" * 1000
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # no download left half-done


def test_a_folder_is_fetched_once_whole(store, tmp_path):
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / f"img_{i}.png").write_bytes(bytes([i]) * 100)
    (src / "sub" / "cap.txt").write_text("a cat")
    store.put_dir("datasets/d1", src)
    gets = count_gets(store)
    cache = StoreCache(store, tmp_path / "cache")
    folder = cache.folder("datasets/d1")
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == ["img_0.png", "img_1.png", "img_2.png", "sub/cap.txt"]
    fetched = len(gets)
    assert cache.folder("datasets/d1") == folder and len(gets) == fetched + 1  # only the manifest is read again
    with pytest.raises(FileNotFoundError):
        cache.folder("datasets/none")


def test_two_processes_fetching_at_once_share_one_whole_copy(store, s3_server, s3_bucket, tmp_path):
    store.put_bytes("loras/x/lora.safetensors", os.urandom(3 << 20))
    src = tmp_path / "ds"
    src.mkdir()
    for i in range(20):
        (src / f"img_{i}.png").write_bytes(os.urandom(10_000))
    store.put_dir("datasets/d2", src)
    script = (
        "import sys; from pathlib import Path; from service.settings import Settings; "
        "from service.stores import make_store; from service.store_cache import StoreCache; "
        f"s = make_store(Settings(**{store_settings(s3_server, s3_bucket)!r})); "
        f"c = StoreCache(s, Path({str(tmp_path / 'cache')!r})); "
        "print(c.file('loras/x/lora.safetensors')); print(c.folder('datasets/d2'))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]  # the same entries, whoever renamed theirs into place first
    assert len(list(Path(outs[0][1]).iterdir())) == 20
    assert Path(outs[0][0]).read_bytes() == store.open("loras/x/lora.safetensors").read()
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_trimmed_least_recently_used_first_but_never_what_was_used_lately(store, tmp_path):
    for name in "abc":
        store.put_bytes(f"loras/{name}/lora.safetensors", name.encode() * 1000)
    cache = StoreCache(store, tmp_path / "cache", max_bytes=2500, keep_s=3600)
    paths = {name: cache.file(f"loras/{name}/lora.safetensors") for name in "ab"}
    hour_ago = time.time() - 7200
    os.utime(paths["a"].parent, (hour_ago, hour_ago))  # a: last used two hours ago
    cache.file("loras/c/lora.safetensors")  # 3000 bytes > 2500: the oldest, a, goes
    assert not paths["a"].exists() and paths["b"].exists()
    store.put_bytes("loras/d/lora.safetensors", b"d" * 1000)
    cache.file("loras/d/lora.safetensors")  # over again, but b and c were used within keep_s: kept
    assert paths["b"].exists() and len(cache.entries()) == 3
    assert cache.file("loras/a/lora.safetensors").read_bytes() == b"a" * 1000  # a trimmed entry comes back


def test_a_local_store_hands_out_its_own_files(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    store.put_bytes("loras/a/lora.safetensors", b"A")
    store.put_bytes("datasets/d/img.png", b"p")
    cache = StoreCache(store, tmp_path / "cache")
    assert cache.file("loras/a/lora.safetensors") == tmp_path / "artifacts" / "loras" / "a" / "lora.safetensors"
    assert cache.folder("datasets/d") == tmp_path / "artifacts" / "datasets" / "d"
    assert not (tmp_path / "cache").exists()  # nothing copied
    with pytest.raises(FileNotFoundError):
        cache.file("loras/none/lora.safetensors")
