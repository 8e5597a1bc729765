"""The training parameters exist once: the HTTP request (api.schemas.TrainingCreate) is tied to the trainer's
TrainConfig by name and default, a job's stored request becomes a config through TrainConfig.from_request
alone (which refuses keys it does not know), and the API's generation defaults are core.presets'."""

import subprocess
import sys
from dataclasses import MISSING, fields

import pytest

from api.schemas import PRESET_DEFAULTS, GenerationCreate, TrainingCreate
from core.presets import PRESETS
from core.train import REQUEST_NAMES, TrainConfig

# Request fields that describe the job, not the run (the worker reads them from the row).
JOB_FIELDS = {"dataset_id", "name", "validation_dataset_id", "webhook_url", "webhook_events_filter", "preset"}
# Request fields whose API default differs from TrainConfig's on purpose.
API_DEFAULTS = {"checkpoint_every": None}  # None: the worker picks about 10 per run (worker.training)
# TrainConfig fields a request does not set, and who does instead. Adding a TrainConfig field fails
# test_every_config_field_is_requested_or_set_elsewhere until it is added to the request or here.
NOT_IN_REQUEST = {
    "model_path",
    "out_dir",
    "data_dir",
    "resume",
    "keep_checkpoints",
    "base_model_name",  # the worker
    "validation_dir",  # the worker: validation_dataset_id's files
    "min_side",  # the service's setting, added by the route to the params
    "weight_decay",
    "betas",
    "max_grad_norm",
    "lora_dropout",
    "min_lr_ratio",
    "extra_targets",
    "full",
    "sigma_dist",
    "sigma_shift",
    "weighting",  # the recipe, fixed for the service
    "num_workers",
    "device",
    "precision",
    "gradient_checkpointing",
    "compile",
    "cuda_graphs",  # like compile: the worker's GPU business
    "offload_blocks",  # the worker's GPU memory business, like gradient_checkpointing
    "log_every",
    "prefetch",
    "grad_sync",
    "sample_guidance",
    "sample_preset",
    "sample_seed",  # the machine's and the worker's business
    "reference_dropout",  # edit datasets: a CLI option; the training API is unchanged
}


def _field_of(request_name: str) -> str:
    return REQUEST_NAMES.get(request_name, request_name)


def test_every_request_field_is_a_config_field_or_the_jobs():
    config = {f.name for f in fields(TrainConfig)}
    strays = [n for n in TrainingCreate.model_fields if n not in JOB_FIELDS and _field_of(n) not in config]
    assert strays == [], f"TrainingCreate fields the trainer does not have: {strays}"


def test_every_config_field_is_requested_or_set_elsewhere():
    requested = {_field_of(n) for n in TrainingCreate.model_fields}
    missing = [f.name for f in fields(TrainConfig) if f.name not in requested | NOT_IN_REQUEST]
    assert missing == [], f"TrainConfig fields neither in TrainingCreate nor in NOT_IN_REQUEST: {missing}"
    assert not requested & NOT_IN_REQUEST, "a field listed as not requested is in TrainingCreate"


def test_request_defaults_are_the_trainers():
    by_name = {f.name: f for f in fields(TrainConfig)}
    for name, info in TrainingCreate.model_fields.items():
        if name in JOB_FIELDS or info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        if name in API_DEFAULTS:
            assert default == API_DEFAULTS[name], name
            continue
        f = by_name[_field_of(name)]
        expected = f.default if f.default is not MISSING else f.default_factory()
        assert (tuple(default) if isinstance(default, list) else default) == expected, name


def test_a_stored_request_maps_onto_the_config_by_name():
    body = TrainingCreate(
        dataset_id="d", trigger="sks", learning_rate=3e-4, sample_prompts=["sks, a cat"], rank=8, flip=True
    )
    params = {**body.model_dump(), "name": "job", "min_side": 128}
    cfg = TrainConfig.from_request(
        params, not_training=tuple(JOB_FIELDS), model_path="m", out_dir="o", checkpoint_every=100
    )
    assert (cfg.lr, cfg.rank, cfg.flip, cfg.min_side) == (3e-4, 8, True, 128)
    assert cfg.sample_prompts == ("sks, a cat",)  # JSON lists become the dataclass's tuples
    assert cfg.checkpoint_every == 100  # what the caller fixes wins over the request
    cfg.validate()


def test_an_unknown_request_key_is_refused_by_name():
    with pytest.raises(ValueError, match="learning_rte"):
        TrainConfig.from_request({"learning_rte": 1e-3}, model_path="m", out_dir="o")
    with pytest.raises(ValueError, match="dataset_id"):  # job keys pass only when the caller names them
        TrainConfig.from_request({"dataset_id": "d"}, model_path="m", out_dir="o")
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        TrainConfig.from_request({}, model_path="m", out_dir="o", outdir="typo")


def test_generation_defaults_are_the_presets():
    for name, defaults in PRESET_DEFAULTS.items():
        assert defaults == {"steps": PRESETS[name].steps, "guidance": PRESETS[name].guidance}
        body = GenerationCreate(prompt="p", preset=name)
        assert (body.steps, body.guidance) == (PRESETS[name].steps, PRESETS[name].guidance)


@pytest.mark.parametrize("module", ["core.train", "core.train.config", "core.presets", "api.schemas"])
def test_the_shared_facts_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} pulled in torch"
