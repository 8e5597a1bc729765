"""Training presets have one owner (core.train.presets): the API lists them, applies one to the fields a request
leaves out (what the person typed wins), checks the result like typed values, and the worker turns the stored
request into the preset's TrainConfig."""

from __future__ import annotations

from api_helpers import auth
from test_api_trainings import submit

from core.train import TrainConfig
from core.train.presets import TRAINING_PRESETS
from worker.training import JOB_KEYS


def test_the_list_is_the_core_table(client, alice):
    assert client.get("/v1/training-presets").status_code == 401
    r = client.get("/v1/training-presets", headers=auth(alice))
    assert r.status_code == 200
    body = r.json()
    assert list(body) == list(TRAINING_PRESETS)
    for name, p in TRAINING_PRESETS.items():
        assert body[name] == {"label": p.label, "summary": p.summary, "values": p.values, "default": False}
    assert body["standard"]["values"] == {}  # the recipe's defaults, nothing over them


def test_every_preset_is_a_valid_request_and_becomes_its_config(client, alice, dataset):
    for name, preset in TRAINING_PRESETS.items():
        r = submit(client, alice, dataset, preset=name)
        assert r.status_code == 202, (name, r.text)
        params = r.json()["params"]
        assert params["preset"] == name
        assert {k: params[k] for k in preset.values} == preset.values
        cfg = TrainConfig.from_request(params, not_training=JOB_KEYS + ("min_side",), model_path="m", out_dir="o")
        assert (cfg.steps, cfg.rank, cfg.lr, cfg.resolution) == (
            preset.values.get("steps", TrainConfig.steps),
            preset.values.get("rank", TrainConfig.rank),
            preset.values.get("learning_rate", TrainConfig.lr),
            preset.values.get("resolution", TrainConfig.resolution),
        )


def test_fields_given_win_over_the_preset(client, alice, dataset):
    r = submit(client, alice, dataset, preset="bundled", rank=4, learning_rate=1e-3)
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert (params["rank"], params["learning_rate"]) == (4, 1e-3)  # typed
    bundled = TRAINING_PRESETS["bundled"].values
    assert (params["resolution"], params["steps"]) == (bundled["resolution"], bundled["steps"])  # the preset's
    assert params["prior_preservation"] is True
    assert params["alpha"] == TRAINING_PRESETS["bundled"].values["alpha"]


def test_a_preset_value_that_clashes_with_a_typed_one_is_refused_naming_both(client, alice, dataset):
    r = submit(client, alice, dataset, preset="quick", steps=50)  # quick previews every 100 steps
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert "sample_every (100) must not exceed steps (50)" in msg


def test_an_unknown_preset_is_422_listing_the_names(client, alice, dataset):
    before = client.get("/v1/trainings", headers=auth(alice)).json()["count"]
    r = submit(client, alice, dataset, preset="fastest")
    assert r.status_code == 422
    text = r.text
    assert "preset" in text and all(name in text for name in TRAINING_PRESETS)
    assert client.get("/v1/trainings", headers=auth(alice)).json()["count"] == before  # nothing queued
