"""The service's default image size: on the bundled model (trained at 64-256 px) a generation that gives no size
gets 128x128, on another model the official 1024x1024; a side given is kept; the OpenAPI document (which the web
page's form reads) carries the service's default; O1LORA_GENERATION_SIZE chooses and is checked at start."""

from __future__ import annotations

import pytest
from api_helpers import auth
from pydantic import ValidationError

from service.settings import BUNDLED_MODEL, Settings


def size_of(client, owner, **fields) -> tuple[int, int]:
    r = client.post("/v1/generations", headers=auth(owner), json={"prompt": "a red circle", **fields})
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    return params["width"], params["height"]


def documented(client) -> tuple[int, int]:
    props = client.get("/openapi.json").json()["components"]["schemas"]["GenerationCreate"]["properties"]
    return props["width"]["default"], props["height"]["default"]


def test_bundled_model_generates_at_its_own_size_unless_told(make_client, alice):
    client = make_client(model_path=BUNDLED_MODEL, generation_size="auto")
    assert size_of(client, alice) == (128, 128)
    assert size_of(client, alice, width=256) == (256, 128)  # a side given is kept, the other is the default
    assert size_of(client, alice, width=1024, height=1024) == (1024, 1024)
    assert documented(client) == (128, 128)  # what the web page's form shows


def test_another_model_keeps_the_official_size(make_client, alice, tmp_path):
    client = make_client(model_path=tmp_path, generation_size="auto")  # e.g. a real HiDream-O1 folder
    assert size_of(client, alice) == (1024, 1024)
    assert documented(client) == (1024, 1024)
    chosen = make_client(model_path=tmp_path, generation_size="512x768")
    assert size_of(chosen, alice) == (512, 768) and documented(chosen) == (512, 768)


def test_a_bad_size_setting_fails_at_start_naming_it():
    for bad in ("100x100", "0x64", "8192x64"):
        with pytest.raises(ValidationError, match="O1LORA_GENERATION_SIZE"):
            Settings(generation_size=bad)
    with pytest.raises(ValidationError):
        Settings(generation_size="large")
