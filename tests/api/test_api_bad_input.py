"""Malformed requests and hostile uploads: a 4xx whose message says what is wrong, and the database and the
artifact store exactly as before (no row, no file, no staging left behind).

    .venv/bin/python -m pytest tests/api/test_api_bad_input.py -q
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile

import numpy as np
import pytest
from api_helpers import auth, db_counts, lora_safetensors, png, store_files, zip_bytes
from PIL import Image
from safetensors.numpy import save

F = "files"


def noise_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "GIF")
    return buf.getvalue()


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png())
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def one(name, data, mime="application/octet-stream"):
    return [(F, (name, data, mime))]


DATASET_UPLOADS = [
    ("no files", [], 422, "files"),
    ("disallowed type", one("run.exe", b"MZ"), 422, "file type not allowed"),
    ("path in name", one("../evil.png", png()), 422, "plain file names"),
    ("backslash in name", one("a\\b.png", png()), 422, "plain file names"),
    ("duplicate names", one("a.png", png()) + one("a.png", png()), 422, "uploaded twice"),
    ("file over the per-file limit", one("big.png", noise_png(300, 300)), 413, "limit"),
    ("image over the pixel limit", one("huge.png", png(600, 600)), 422, "huge.png: 600x600"),
    ("corrupt image", one("bad.png", png()[:40]), 422, "bad.png"),
    ("gif named png", one("anim.png", gif()), 422, "anim.png"),
    ("caption not utf-8", one("a.png", png()) + one("a.txt", b"\xff\xfe\xfa"), 422, "UTF-8"),
    ("caption too big", one("a.png", png()) + one("a.txt", b"x" * 2000), 413, "a.txt"),
    ("too many files", [(F, (f"{i}.png", png(), "image/png")) for i in range(21)], 413, "at most 20"),
    ("image too small to train", one("tiny.png", png(8, 8)), 422, "tiny.png"),
    ("captions only", one("a.txt", b"a caption"), 422, "no PNG, JPEG or WebP"),
    ("zip with other files", one("d.zip", zip_bytes({"a.png": png()})) + one("b.png", png()), 422, "alone"),
    ("zip slip", one("d.zip", zip_bytes({"a.png": png(), "../../evil.png": png()})), 422, "'..'"),
    ("zip absolute path", one("d.zip", zip_bytes({"/etc/evil.png": png()})), 422, "absolute"),
    ("zip symlink", one("d.zip", symlink_zip()), 422, "links"),
    ("zip too many entries", one("d.zip", zip_bytes({f"{i}.png": b"" for i in range(25)})), 413, "entries"),
    ("zip entry over the file limit", one("d.zip", zip_bytes({"a.png": b"\0" * 300_000})), 413, "a.png"),
    ("zip bomb (total)", one("d.zip", zip_bytes({f"{i}.png": b"\0" * 190_000 for i in range(6)})), 413, "expands"),
    ("zip disallowed entry", one("d.zip", zip_bytes({"a.png": png(), "x.sh": b"rm -rf"})), 422, "x.sh"),
    ("not a zip", one("d.zip", b"PK\x03\x04 garbage"), 422, "not a readable zip"),
    ("request over the body limit", one("a.png", b"\0" * 2_100_000), 413, "limit"),
]


@pytest.mark.parametrize("case, files, code, message", DATASET_UPLOADS, ids=[c[0] for c in DATASET_UPLOADS])
def test_bad_dataset_upload_is_rejected_and_writes_nothing(
    client, alice, Session, settings, case, files, code, message
):
    before = (db_counts(Session), store_files(settings))
    r = client.post("/v1/datasets", headers=auth(alice), files=files or None, data={"name": "x"})
    assert r.status_code == code, (case, r.status_code, r.text)
    assert message in r.text, (case, r.text)
    assert (db_counts(Session), store_files(settings)) == before
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []  # staging cleaned up


def test_rejected_for_content_carries_the_validation_report(client, alice):
    r = client.post("/v1/datasets", headers=auth(alice), files=one("ok.png", png()) + one("tiny.png", png(8, 8)))
    error = r.json()["error"]
    assert r.status_code == 422 and "tiny.png" in error["message"] and error["field"] == "files"
    assert [i["name"] for i in error["report"]["too_small"]] == ["tiny.png"] and error["report"]["usable"] == 1


def header_lies() -> bytes:
    good = lora_safetensors()
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    key = next(k for k in header if k.endswith("lora_A.weight"))
    header[key]["data_offsets"][1] += 10_000  # points past the end of the file
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + good[8 + n :]


def not_a_lora() -> bytes:
    return save({"model.language_model.layers.0.self_attn.q_proj.weight": np.zeros((8, 8), np.float32)})


def half_pair() -> bytes:
    return save(
        {"diffusion_model.language_model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 8), np.float32)}
    )


def wrong_model() -> bytes:
    return save(
        {
            "lora_unet_double_blocks_0_img_mod_lin.lora_down.weight": np.zeros((4, 8), np.float32),
            "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight": np.zeros((8, 4), np.float32),
        }
    )


def rank_mismatch() -> bytes:
    return save(
        {
            "diffusion_model.language_model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 8), np.float32),
            "diffusion_model.language_model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((8, 2), np.float32),
        }
    )


LORA_UPLOADS = [
    ("pickle file", "lora.bin", b"\x80\x04K\x01.", 422, "pickle"),
    ("garbage", "x.safetensors", b"hello world, not tensors", 422, "not a safetensors"),
    ("huge header length", "x.safetensors", struct.pack("<Q", 2**62) + b"{}", 422, "header length"),
    ("offsets past the end", "x.safetensors", header_lies(), 422, "malformed"),
    ("plain weights", "x.safetensors", not_a_lora(), 422, "no LoRA weights"),
    ("lora_A without lora_B", "x.safetensors", half_pair(), 422, "not its pair"),
    ("another model's LoRA", "x.safetensors", wrong_model(), 422, "not HiDream-O1 modules"),
    ("rank mismatch", "x.safetensors", rank_mismatch(), 422, "rank-r pair"),
    (
        "zip without adapter_config",
        "p.zip",
        zip_bytes({"adapter_model.safetensors": lora_safetensors("peft")}),
        422,
        "adapter_config.json missing",
    ),
    (
        "PEFT zip with ComfyUI keys",
        "p.zip",
        zip_bytes({"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": lora_safetensors()}),
        422,
        "not PEFT ones",
    ),
    ("over the size limit", "x.safetensors", b"\0" * 1_100_000, 413, "limit"),
]


@pytest.mark.parametrize("case, name, data, code, message", LORA_UPLOADS, ids=[c[0] for c in LORA_UPLOADS])
def test_bad_lora_import_is_rejected_and_writes_nothing(
    client, alice, Session, settings, case, name, data, code, message
):
    before = (db_counts(Session), store_files(settings))
    r = client.post("/v1/loras", headers=auth(alice), files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == code, (case, r.status_code, r.text)
    assert message in r.text, (case, r.text)
    assert (db_counts(Session), store_files(settings)) == before


JSON_REQUESTS = [
    ("POST", "/v1/generations", b"{not json", 422, "JSON"),
    ("POST", "/v1/generations", {"prompt": ""}, 422, "prompt"),
    ("POST", "/v1/generations", {"prompt": "p", "width": 1000}, 422, "multiple of 32"),
    ("POST", "/v1/generations", {"prompt": "p", "num_images": 9}, 422, "num_images"),
    ("POST", "/v1/generations", {"prompt": "p", "preset": "turbo"}, 422, "preset"),
    ("POST", "/v1/generations", {"prompt": "p", "steps": 0}, 422, "steps"),
    ("POST", "/v1/generations", {"prompt": "p", "guidance": -1}, 422, "guidance"),
    ("POST", "/v1/generations", {"prompt": "p", "loras": [{"id": "a"}, {"id": "a"}]}, 422, "once"),
    ("POST", "/v1/generations", {"prompt": "p", "loras": [{"id": "a", "scale": 9}]}, 422, "scale"),
    ("POST", "/v1/generations", {"prompt": "p", "negative": "x"}, 422, "negative"),
    ("POST", "/v1/generations", {"prompt": "p" * 2_000_000}, 413, "limit"),
    ("POST", "/v1/trainings", ["a", "list"], 422, "body"),
    ("GET", "/v1/trainings?limit=0", None, 422, "limit"),
    ("GET", "/v1/loras?offset=-1", None, 422, "offset"),
    ("GET", "/v1/loras/x/file?format=onnx", None, 422, "format"),
    ("GET", "/v1/generations/x/images/first", None, 422, "n"),
    ("POST", "/v1/generations", {"prompt": "a\u0000b"}, 422, "NUL"),
    ("POST", "/v1/generations", {"prompt": "p", "seed": 2**63}, 422, "seed"),
    ("POST", "/v1/trainings", {"dataset_id": "d", "trigger": "t", "sample_prompts": ["a\u0000"]}, 422, "NUL"),
    ("GET", "/v1/datasets/a%00b", None, 422, "dataset_id"),
]


@pytest.mark.parametrize("method, path, body, code, message", JSON_REQUESTS)
def test_malformed_requests_are_4xx_naming_the_problem(
    client, alice, Session, settings, key_prefix, method, path, body, code, message
):
    before = (db_counts(Session), store_files(settings))
    kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    headers = {**auth(alice), **({"content-type": "application/json"} if isinstance(body, bytes) else {})}
    r = client.request(method, path, headers=headers, **kw)
    assert r.status_code == code, (path, body if not isinstance(body, dict) else list(body), r.text[:300])
    assert message in r.text
    assert (db_counts(Session), store_files(settings)) == before


def test_chunked_upload_without_content_length_is_cut_off_at_the_limit(client, alice, Session, settings):
    before = (db_counts(Session), store_files(settings))
    boundary = "b0undary"

    def body():  # no Content-Length: the limit must be enforced on the bytes as they arrive
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(30):
            yield b"\0" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/v1/datasets",
        headers={**auth(alice), "content-type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert r.status_code == 413 and "over the limit of 2000000 bytes" in r.text
    assert (db_counts(Session), store_files(settings)) == before


def test_nul_in_form_fields_is_422_naming_the_field(client, alice, Session, settings):
    before = (db_counts(Session), store_files(settings))
    r = client.post(
        "/v1/loras",
        headers=auth(alice),
        data={"trigger": "a\x00b"},
        files={"file": ("l.safetensors", lora_safetensors(), "application/octet-stream")},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "trigger"
    r = client.post("/v1/datasets", headers=auth(alice), data={"name": "a\x00b"}, files=one("a.png", png()))
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"
    assert (db_counts(Session), store_files(settings)) == before
