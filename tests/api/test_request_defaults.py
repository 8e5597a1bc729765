"""The service's defaults for a generation request.

Size: on the bundled model (trained at 64-256 px) a generation that gives no size gets 256x256 (where it draws its small shapes right), on another model
the official 1024x1024; a side given is kept; the OpenAPI document (which the web page's form reads) carries the
service's default; O1LORA_GENERATION_SIZE chooses and is checked at start. Sampling: on the bundled model a
full-preset request that gives no steps or CFG gets the model's own (20 steps, CFG 2: CFG 5 overshoots it), on
another model the preset's 50 / 5; O1LORA_GENERATION_SAMPLING chooses."""

from __future__ import annotations

import pytest
from api_helpers import auth
from pydantic import ValidationError

from service.settings import BUNDLED_MODEL, Settings


def params_of(client, owner, **fields) -> dict:
    r = client.post("/v1/generations", headers=auth(owner), json={"prompt": "a red circle", **fields})
    assert r.status_code == 202, r.text
    return r.json()["params"]


def size_of(client, owner, **fields) -> tuple[int, int]:
    params = params_of(client, owner, **fields)
    return params["width"], params["height"]


def sampling_of(client, owner, **fields) -> tuple[int, float]:
    params = params_of(client, owner, **fields)
    return params["steps"], params["guidance"]


def documented(client) -> tuple[int, int]:
    props = client.get("/openapi.json").json()["components"]["schemas"]["GenerationCreate"]["properties"]
    return props["width"]["default"], props["height"]["default"]


def test_bundled_model_generates_at_its_own_size_unless_told(make_client, alice):
    client = make_client(model_path=BUNDLED_MODEL, generation_size="auto")
    assert size_of(client, alice) == (256, 256)
    assert size_of(client, alice, width=128) == (128, 256)  # a side given is kept, the other is the default
    assert size_of(client, alice, width=1024, height=1024) == (1024, 1024)
    assert documented(client) == (256, 256)  # what the web page's form shows


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


def test_bundled_model_samples_with_its_own_steps_and_cfg_unless_told(make_client, alice):
    client = make_client(model_path=BUNDLED_MODEL, generation_sampling="auto")
    assert sampling_of(client, alice) == (20, 2.0)
    assert sampling_of(client, alice, steps=35) == (35, 2.0)  # a field given is kept, the other is the default
    assert sampling_of(client, alice, guidance=5) == (20, 5.0)
    assert sampling_of(client, alice, guidance=0) == (20, 0.0)  # 0 (no CFG) is a value given, not "none"
    assert sampling_of(client, alice, preset="dev") == (28, 0.0)  # the distilled preset keeps its own
    props = client.get("/openapi.json").json()["components"]["schemas"]["GenerationCreate"]["properties"]
    assert (
        "this service's, 20" in props["steps"]["description"]
        and "this service's, 2" in props["guidance"]["description"]
    )


def test_another_model_keeps_the_full_presets_sampling_and_the_setting_chooses(make_client, alice, tmp_path):
    assert sampling_of(make_client(model_path=tmp_path, generation_sampling="auto"), alice) == (50, 5.0)
    assert sampling_of(make_client(model_path=BUNDLED_MODEL, generation_sampling="preset"), alice) == (50, 5.0)
    assert sampling_of(make_client(model_path=tmp_path, generation_sampling="30,4.5"), alice) == (30, 4.5)
    with pytest.raises(ValidationError):
        Settings(generation_sampling="many")
