"""The API's contract: one error shape for every error, no 500 for any hostile value, a complete OpenAPI document,
and no internal text (object reprs, server paths, a second pixel limit) in what a client reads.

    .venv/bin/python -m pytest tests/api/test_api_contract.py -q
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from api_helpers import auth, db_counts, store_files

from db.generations import claim_generation, create_generation, fail_generation

NON_FINITE = [float("nan"), float("inf"), float("-inf")]
FLOAT_FIELDS = [
    ("/v1/generations", {"prompt": "p", "guidance": None}, "guidance"),
    ("/v1/generations", {"prompt": "p", "loras": [{"id": "a", "scale": None}]}, "loras[0].scale"),
    ("/v1/trainings", {"dataset_id": "d", "trigger": "t", "alpha": None}, "alpha"),
    ("/v1/trainings", {"dataset_id": "d", "trigger": "t", "learning_rate": None}, "learning_rate"),
    ("/v1/trainings", {"dataset_id": "d", "trigger": "t", "caption_dropout": None}, "caption_dropout"),
]


def strict_json(text: str):
    """What a strict client parses: NaN / Infinity in a response would raise here."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"non-JSON constant {c}")))


def with_value(body, value):
    out = json.loads(json.dumps(body))
    target = out["loras"][0] if "loras" in out else out
    key = next(k for k, v in target.items() if v is None)
    target[key] = value
    return out


@pytest.mark.parametrize("value", NON_FINITE, ids=["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path, body, field", FLOAT_FIELDS, ids=[f[2] for f in FLOAT_FIELDS])
def test_non_finite_numbers_are_422_naming_the_field(client, alice, Session, settings, path, body, field, value):
    before = (db_counts(Session), store_files(settings))
    raw = json.dumps(with_value(body, value))  # Python writes the NaN / Infinity / -Infinity tokens
    assert any(t in raw for t in ("NaN", "Infinity"))
    r = client.post(path, headers={**auth(alice), "content-type": "application/json"}, content=raw)
    assert r.status_code == 422, r.text
    error = strict_json(r.text)["error"]
    assert error["field"] == field and error["code"] == "invalid" and "finite" in error["message"]
    assert (db_counts(Session), store_files(settings)) == before


@pytest.mark.parametrize("route", ["datasets", "trainings", "loras", "generations"])
@pytest.mark.parametrize("offset", [2**63, 2**64, 10**30])
def test_offset_beyond_int64_is_422_not_500(client, alice, route, offset):
    r = client.get(f"/v1/{route}?offset={offset}", headers=auth(alice))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "offset"


@pytest.mark.parametrize("route", ["datasets", "trainings", "loras", "generations"])
def test_largest_allowed_offset_is_an_empty_page(client, alice, route):
    from api.deps import MAX_OFFSET

    r = client.get(f"/v1/{route}?offset={MAX_OFFSET}&limit=100", headers=auth(alice))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == []


def _error_cases(alice):
    h = auth(alice)
    return [
        ("GET", "/v1/loras", {}, None, 401),
        ("GET", "/v1/loras", {"Authorization": "Bearer nope"}, None, 401),
        ("GET", "/v1/loras/abc", h, None, 404),
        ("GET", "/v1/no-such-route", h, None, 404),
        ("PUT", "/v1/loras/abc", h, None, 405),
        ("POST", "/v1/generations", h, {"prompt": "p", "width": 3630}, 422),
        ("POST", "/v1/generations", h, {"prompt": "p" * 2_000_000}, 413),
        ("GET", "/v1/loras?limit=abc", h, None, 422),
    ]


def test_every_error_has_the_one_documented_shape(client, alice):
    for method, path, headers, body, code in _error_cases(alice):
        r = client.request(method, path, headers=headers, json=body)
        assert r.status_code == code, (method, path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/json"
        doc = strict_json(r.text)
        assert list(doc) == ["error"], (path, doc)
        assert isinstance(doc["error"]["code"], str) and isinstance(doc["error"]["message"], str), doc
        assert set(doc["error"]) <= {"code", "message", "field", "details", "report"}, doc


def test_a_conflict_has_the_one_shape(client, alice):
    gen = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "steps": 2}).json()
    assert client.post(f"/v1/generations/{gen['id']}/cancel", headers=auth(alice)).status_code == 200
    r = client.post(f"/v1/generations/{gen['id']}/cancel", headers=auth(alice))
    assert (
        r.status_code == 409
        and r.json()["error"]["code"] == "conflict"
        and "canceled" in r.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/v1/loras/abc", {"GET", "DELETE"}),
        ("PATCH", "/v1/datasets", {"GET", "POST"}),
        ("DELETE", "/v1/generations/abc", {"GET"}),
        ("GET", "/v1/generations/abc/cancel", {"POST"}),
    ],
)
def test_405_allow_header_lists_every_method_of_the_path(client, alice, method, path, allowed):
    r = client.request(method, path, headers=auth(alice))
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_declares_auth_errors_bounds_and_parameters(app):
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    schemas = spec["components"]["schemas"]
    gen = schemas["GenerationCreate"]["properties"]
    assert gen["width"]["multipleOf"] == 32 and gen["height"]["multipleOf"] == 32
    assert schemas["Body_upload_dataset_v1_datasets_post"]["properties"]["files"]["minItems"] == 1
    assert "HTTPValidationError" not in schemas  # every 422 documents the one error body instead
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for p in op.get("parameters", []):
                assert p.get("description"), (where, p["name"])
            # Any route may answer 500, any POST 413 (the body limit): documented everywhere, in the one shape.
            assert op["responses"]["500"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
            if method == "post":
                assert op["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ErrorBody"
                )
            if not path.startswith("/v1/"):
                continue
            responses = op["responses"]
            assert op.get("security"), where
            assert {"401", "422", "503"} <= set(responses), where
            assert "503" in responses and "Retry-After" in responses["503"]["headers"], where
            if "{" in path:
                assert "404" in responses, where
            if method == "post" and path in ("/v1/generations", "/v1/trainings"):
                assert {"404", "413", "429"} <= set(responses) and "Retry-After" in responses["429"]["headers"]
            for code, resp in responses.items():
                if code.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (where, code)


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (a few dozen bytes: only the header is ever read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


LEAKY_UPLOADS = [
    ("unidentifiable image", "bad.png", b"\x89PNG\r\n\x1a\n not really"),
    ("over Pillow's own bomb limit", "bomb.png", png_header(20_000, 20_000)),
    ("over our pixel limit only", "big.png", png_header(1000, 1000)),
]


@pytest.mark.parametrize("case, name, data", LEAKY_UPLOADS, ids=[c[0] for c in LEAKY_UPLOADS])
def test_upload_errors_hold_no_internal_text(client, alice, settings, case, name, data):
    r = client.post("/v1/datasets", headers=auth(alice), files=[("files", (name, data, "image/png"))])
    assert r.status_code == 422, r.text
    text = r.text
    assert "object at 0x" not in text and "BytesIO" not in text
    assert str(settings.data_dir) not in text and "/tmp/" not in text
    message = r.json()["error"]["message"]
    assert message.startswith(f"{name}: ")
    if "limit" in message:  # one limit: ours (262144 px in these settings), never Pillow's 178956970
        assert "262144 pixels" in message and "178956970" not in message and message.count("limit") == 1


def test_job_errors_are_shown_without_server_paths(client, alice, Session, settings):
    stored = settings.resolved_artifact_dir / "loras" / "x" / "lora.safetensors"
    with Session() as s:
        gen = create_generation(s, owner_id=alice["owner_id"], prompt="p", params={}, num_images=1, total_steps=2)
        claim_generation(s, job_id=gen.id, worker_id="w")
        fail_generation(
            s,
            job_id=gen.id,
            worker_id="w",
            error=f"{stored}: shape mismatch at <_io.BytesIO object at 0x7f3a2c1e9d50>",
        )
    error = client.get(f"/v1/generations/{gen.id}", headers=auth(alice)).json()["error"]
    assert error.startswith("lora.safetensors: shape mismatch")
    assert str(settings.resolved_artifact_dir) not in error and "0x7f3a" not in error
