"""The API on an S3 store (O1LORA_STORE_URL against moto's real S3 server): uploads land in the bucket whole
(a dataset with its manifest, a large LoRA in parts), downloads stream from it, deletes empty it, and nothing
is written to a local artifact folder.

    .venv/bin/python -m pytest tests/api/test_api_s3_store.py -q
"""

from __future__ import annotations

import asyncio
import io
import tracemalloc
import zipfile

import pytest
from api_helpers import REDIS_URL, auth, lora_safetensors, make_celery, owner_headers, png
from fastapi.testclient import TestClient
from s3_helpers import object_keys, open_multipart_uploads, store_settings

from api.files import send_artifact
from api.main import create_app
from jobqueue.enqueue import Enqueuer
from service.s3_store import MANIFEST, S3Store


@pytest.fixture(scope="module")
def bucket(s3_server):
    from s3_helpers import new_bucket

    return new_bucket(s3_server)


@pytest.fixture(scope="module")
def s3_app(settings, key_prefix, s3_server, bucket, tmp_path_factory):
    s = settings.model_copy(
        update={
            **store_settings(s3_server, bucket),
            "data_dir": tmp_path_factory.mktemp("s3-api-data"),
            "s3_multipart_mib": 5,  # S3's smallest part: the 6 MiB LoRA below goes up in two
            "max_lora_bytes": 16 << 20,
        }
    )
    return create_app(s, enqueuer=Enqueuer(lambda: make_celery(REDIS_URL, key_prefix)))


@pytest.fixture(scope="module")
def client(s3_app):
    with TestClient(s3_app) as c:
        yield c


@pytest.fixture(scope="module")
def carol(s3_app):
    return owner_headers(s3_app.state.sessions, "carol")


def test_a_dataset_goes_to_the_bucket_whole_and_its_delete_empties_it(client, carol, s3_app, s3_server, bucket):
    files = [
        ("files", ("a.png", png(), "image/png")),
        ("files", ("a.txt", b"a red box", "text/plain")),
        ("files", ("b.png", png(48, 64), "image/png")),
    ]
    r = client.post("/v1/datasets", headers=auth(carol), files=files, data={"name": "boxes", "resolution": "64"})
    assert r.status_code == 201, r.text
    ds = r.json()
    prefix = f"o1lora/datasets/{ds['id']}"
    assert object_keys(s3_server, bucket, prefix) == [
        f"{prefix}/{MANIFEST}",
        f"{prefix}/a.png",
        f"{prefix}/a.txt",
        f"{prefix}/b.png",
    ]
    assert s3_app.state.store.manifest(f"datasets/{ds['id']}")["files"]["a.txt"]["size"] == len(b"a red box")
    assert not (s3_app.state.settings.data_dir / "artifacts").exists()  # nothing in a local artifact folder
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth(carol)).status_code == 204
    assert object_keys(s3_server, bucket, prefix) == []


def test_a_refused_dataset_leaves_nothing_in_the_bucket(client, carol, s3_server, bucket):
    before = object_keys(s3_server, bucket)
    r = client.post("/v1/datasets", headers=auth(carol), files=[("files", ("a.png", b"not a png", "image/png"))])
    assert r.status_code == 422 and "a.png" in r.text
    assert object_keys(s3_server, bucket) == before


def test_an_image_and_a_large_lora_stream_back_from_the_bucket(client, carol, s3_server, bucket):
    data = png(80, 48, color=(10, 200, 30))
    img = client.post("/v1/images", headers=auth(carol), files={"file": ("ref.png", data, "image/png")}).json()
    got = client.get(f"/v1/images/{img['id']}/file", headers=auth(carol))
    assert got.status_code == 200 and got.content == data and got.headers["content-length"] == str(len(data))

    lora = lora_safetensors("comfyui", rank=256, layers=8)  # 6.3 MB: a multipart upload in 5 MiB parts
    r = client.post(
        "/v1/loras", headers=auth(carol), files={"file": ("big.safetensors", lora, "application/octet-stream")}
    )
    assert r.status_code == 201, r.text
    lora_id = r.json()["id"]
    original = client.get(f"/v1/loras/{lora_id}/file?format=original", headers=auth(carol))
    assert original.status_code == 200 and original.content == lora
    assert 'filename="big.safetensors"' in original.headers["content-disposition"]
    assert open_multipart_uploads(s3_server, bucket) == []
    store: S3Store = client.app.state.store
    (key,) = [
        k for k in object_keys(s3_server, bucket, f"o1lora/loras/{lora_id}") if k.endswith("/original.safetensors")
    ]
    etag = store.client.head_object(Bucket=bucket, Key=key)["ETag"]
    assert etag.strip('"').endswith("-2")  # went up in two parts
    # The converted formats read the stored file through the seekable ranged reader.
    comfy = client.get(f"/v1/loras/{lora_id}/file?format=comfyui&dtype=fp32", headers=auth(carol))
    assert comfy.status_code == 200 and len(comfy.content) > 6_000_000
    peft = client.get(f"/v1/loras/{lora_id}/file?format=peft", headers=auth(carol))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(
        zipfile.ZipFile(io.BytesIO(peft.content)).namelist()
    )
    assert client.delete(f"/v1/loras/{lora_id}", headers=auth(carol)).status_code == 204
    assert object_keys(s3_server, bucket, f"o1lora/loras/{lora_id}") == []


def test_a_download_streams_in_pieces_without_holding_the_file(s3_app):
    """The API's side of a download: 1 MiB pieces as they come from S3, the Python heap far below the file's
    size while it goes out (the whole 24 MiB would show as >= 24 MiB)."""
    store = s3_app.state.store
    blob = bytes(range(256)) * (24 << 12)  # 24 MiB
    store.put_bytes("generations/g1/0.png", blob)
    del blob
    response = send_artifact(store, "generations/g1/0.png", "image/png", filename="g1-0.png")
    assert response.headers["content-length"] == str(24 << 20)
    sizes, head = [], b""

    async def send() -> None:  # what Starlette does with the body, minus the socket
        nonlocal head
        async for piece in response.body_iterator:
            sizes.append(len(piece))
            head = head or piece[:512]

    tracemalloc.start()
    try:
        asyncio.run(send())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) == 24 << 20 and max(sizes) <= 1 << 20 and head == bytes(range(256)) * 2
    print(f"streaming 24 MiB from S3: Python heap peak {peak / 2**20:.2f} MiB")
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while streaming a 24 MiB file"


def test_a_missing_object_is_a_404_not_a_cut_response(client, carol, s3_app):
    img = client.post("/v1/images", headers=auth(carol), files={"file": ("gone.png", png(), "image/png")}).json()
    for key in s3_app.state.store.list("images"):
        if img["id"] in key:
            s3_app.state.store.delete_prefix(key)
    r = client.get(f"/v1/images/{img['id']}/file", headers=auth(carol))
    assert r.status_code == 404 and "missing" in r.json()["error"]["message"]


def test_ready_checks_the_bucket(client, settings, s3_server):
    assert client.get("/ready").json()["checks"]["store"] == "ok"
    missing = settings.model_copy(update=store_settings(s3_server, "o1lora-no-such-bucket"))
    with TestClient(create_app(missing, enqueuer=Enqueuer(lambda: None))) as c:
        r = c.get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("ClientError")
    assert r.json()["checks"]["database"] == "ok"
