"""The service's default training preset (issue 13): on the bundled model a training request that names no preset
gets the "bundled" recipe, GET /v1/training-presets marks it, fields given still win, `"preset": null` asks for
the recipe's own defaults; on another model nothing changes unless O1LORA_TRAINING_PRESET says so.

Each case is an app of its own on the session's database and Redis (settings differ only in the preset's)."""

from __future__ import annotations

import pytest
from api_helpers import auth

from api.main import create_app
from core.train import TrainConfig
from core.train.presets import TRAINING_PRESETS
from service.settings import BUNDLED_MODEL, Settings

BUNDLED = TRAINING_PRESETS["bundled"].values


def submit(client, owner, dataset, **fields):
    return client.post(
        "/v1/trainings", headers=auth(owner), json={"dataset_id": dataset["id"], "trigger": "sks", **fields}
    )


def defaults_marked(client, owner) -> list[str]:
    r = client.get("/v1/training-presets", headers=auth(owner))
    assert r.status_code == 200, r.text
    return [name for name, p in r.json().items() if p["default"]]


def test_settings_resolve_the_default_from_the_model_path(tmp_path):
    assert Settings(model_path=BUNDLED_MODEL).default_training_preset == "bundled"
    # the same folder spelled another way is still the bundled model
    assert Settings(model_path=BUNDLED_MODEL / ".." / BUNDLED_MODEL.name).default_training_preset == "bundled"
    assert Settings(model_path=tmp_path).default_training_preset is None  # e.g. a real HiDream-O1 folder
    assert Settings(model_path=tmp_path, training_preset="quick").default_training_preset == "quick"
    assert Settings(model_path=BUNDLED_MODEL, training_preset="none").default_training_preset is None


def test_on_the_bundled_model_a_request_without_preset_gets_the_bundled_one(make_client, alice, dataset):
    client = make_client(model_path=BUNDLED_MODEL, training_preset="auto")
    assert defaults_marked(client, alice) == ["bundled"]

    r = submit(client, alice, dataset)
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params["preset"] == "bundled"  # the job records where its values came from
    assert {k: params[k] for k in BUNDLED} == BUNDLED
    assert r.json()["progress"]["total_steps"] == BUNDLED["steps"]

    # what a person writes wins over the default preset, field by field
    params = submit(client, alice, dataset, rank=4, steps=50, sample_every=0).json()["params"]
    assert (params["rank"], params["steps"], params["sample_every"]) == (4, 50, 0)
    assert (params["resolution"], params["learning_rate"]) == (BUNDLED["resolution"], BUNDLED["learning_rate"])

    # another preset named, or null for none: the default does not apply
    params = submit(client, alice, dataset, preset="quick").json()["params"]
    assert (params["preset"], params["steps"]) == ("quick", TRAINING_PRESETS["quick"].values["steps"])
    params = submit(client, alice, dataset, preset=None).json()["params"]
    assert (params["preset"], params["steps"], params["resolution"]) == (None, TrainConfig.steps, 1024)


def test_a_typed_value_that_clashes_with_the_default_preset_is_a_clear_422(make_client, alice, dataset):
    client = make_client(model_path=BUNDLED_MODEL, training_preset="auto")
    before = client.get("/v1/trainings", headers=auth(alice)).json()["count"]
    steps = BUNDLED["steps"]
    r = submit(client, alice, dataset, sample_every=steps + 250)  # more than the preset's steps
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert (
        f"sample_every ({steps + 250}) must not exceed steps ({steps})" in msg
        and "default preset 'bundled'" in msg
    )
    assert client.get("/v1/trainings", headers=auth(alice)).json()["count"] == before  # nothing queued


def test_on_another_model_nothing_is_default_unless_configured(make_client, alice, dataset, tmp_path_factory):
    other = tmp_path_factory.mktemp("real-model")
    client = make_client(model_path=other, training_preset="auto")
    assert defaults_marked(client, alice) == []
    params = submit(client, alice, dataset).json()["params"]
    assert (params["preset"], params["steps"], params["rank"]) == (None, TrainConfig.steps, TrainConfig.rank)

    client = make_client(model_path=other, training_preset="quick")
    assert defaults_marked(client, alice) == ["quick"]
    assert submit(client, alice, dataset).json()["params"]["steps"] == TRAINING_PRESETS["quick"].values["steps"]


def test_an_unknown_default_preset_stops_the_api_at_start(settings):
    with pytest.raises(ValueError, match="O1LORA_TRAINING_PRESET='fastest' is no training preset"):
        create_app(settings.model_copy(update={"training_preset": "fastest"}))


def test_the_service_and_the_core_name_one_bundled_model():
    """service.settings may not import core (tests/test_import_boundaries.py), so both name the folder: the same one,
    or the CLIs and the service would give different models their defaults."""
    from core.bundled import BUNDLED_MODEL_DIR, is_bundled_model

    assert BUNDLED_MODEL.resolve() == BUNDLED_MODEL_DIR.resolve() and is_bundled_model(BUNDLED_MODEL)
