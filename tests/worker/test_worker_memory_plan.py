"""The memory plan: its decisions for the full-size model on 24 / 48 / 80 GB cards, and the training worker
that follows it (releases the resident generation model, refuses at once what cannot fit, turns an OOM
into a failed job with a message)."""

from __future__ import annotations

import pytest

from worker import generation, memory_plan, training
from worker.context import WorkerContext
from worker.memory_plan import (
    FULL_SIZE,
    GIB,
    ModelShape,
    choose_lora_mode,
    generation_need,
    plan_generation,
    plan_training,
    training_need,
)

HEADROOM = int(1.5 * GIB)


def train_plan(free_gib, resolution=1024, batch=1, checkpointing="auto", shape=FULL_SIZE):
    return plan_training(
        shape,
        resolution=resolution,
        batch=batch,
        rank=16,
        checkpointing=checkpointing,
        free_bytes=int(free_gib * GIB),
        total_bytes=int(free_gib * GIB),
        headroom_bytes=HEADROOM,
    )


def test_estimates_reproduce_the_peaks_measured_on_the_h200():
    # bench/RESULTS.md "Memory plan": the fit must stay within 3% of every measured peak it rests on.
    measured = {
        (1024, 1, True): 16.5,
        (2048, 1, True): 18.4,
        (1024, 1, False): 21.5,
        (2048, 1, False): 36.8,
        (1024, 4, False): 37.9,
    }
    for (res, batch, ckpt), gib in measured.items():
        got = training_need(FULL_SIZE, resolution=res, batch=batch, checkpointing=ckpt) / GIB
        assert got == pytest.approx(gib, rel=0.03), (res, batch, ckpt, got)
    # measured with the vision tower resident (before the worker parked it)
    kw = dict(parks_vision=False)
    assert generation_need(FULL_SIZE, width=1024, height=1024, **kw) / GIB == pytest.approx(15.59, rel=0.03)
    assert generation_need(FULL_SIZE, width=2048, height=2048, **kw) / GIB == pytest.approx(16.48, rel=0.03)


def test_fp8_estimates_reproduce_the_h200_run_of_issue_15():
    # bench/RESULTS.md "fp8 base": weights 8.82 GiB, generation 1024^2 9.33; training 1024^2 with checkpointing
    # 10.01 eager / 10.02 compiled with the vision tower resident (bench/probe_fp8_train_memory.py)
    assert FULL_SIZE.base_bytes("fp8") / GIB == pytest.approx(8.82, rel=0.01)
    assert generation_need(
        FULL_SIZE, width=1024, height=1024, base_precision="fp8", parks_vision=False
    ) / GIB == pytest.approx(9.33, rel=0.03)
    kw = dict(resolution=1024, checkpointing=True, base_precision="fp8")
    assert training_need(FULL_SIZE, **kw) / GIB == pytest.approx(10.02, rel=0.03)
    # a text-to-image run leaves the vision tower (1.07 GiB) in host memory
    assert (training_need(FULL_SIZE, **kw) - training_need(FULL_SIZE, vision_resident=False, **kw)) / GIB == (
        pytest.approx(1.07, rel=0.01)
    )


def test_an_fp8_base_fits_a_16_gb_card_where_bf16_does_not():
    kw = dict(resolution=1024, batch=1, rank=16, checkpointing="auto", headroom_bytes=HEADROOM)
    free = int(15.4 * GIB)
    bf16 = plan_training(FULL_SIZE, free_bytes=free, total_bytes=free, vision_resident=True, **kw)
    fp8 = plan_training(FULL_SIZE, free_bytes=free, total_bytes=free, base_precision="fp8", **kw)
    assert bf16.action == "refuse" and "16.6 GiB" in bf16.message
    assert (fp8.action, fp8.checkpointing) == ("run", True)


def test_fp8_offload_estimate_reproduces_the_capped_h200_run():
    # bench/RESULTS.md, memory caps: fp8 1024^2 with checkpointing and 12 layers offloaded, 8.21 GiB
    kw = dict(resolution=1024, checkpointing=True, base_precision="fp8", vision_resident=True)
    assert training_need(FULL_SIZE, offload_blocks=12, **kw) / GIB == pytest.approx(8.21, rel=0.03)


def test_an_fp8_training_on_a_12_gb_card_runs_compiled_or_offloaded_instead_of_being_refused():
    kw = dict(resolution=1024, batch=1, rank=16, checkpointing="auto", base_precision="fp8")

    def plan(free_gib, headroom_gib=1.5, **more):
        free = int(free_gib * GIB)
        return plan_training(
            FULL_SIZE, free_bytes=free, total_bytes=free, headroom_bytes=int(headroom_gib * GIB), **kw, **more
        )

    # 12 GB (~11.4 GiB usable, 9.9 after the headroom): text-to-image needs ~8.9 GiB, the vision tower on the host
    card12 = plan(11.4)
    assert (card12.action, card12.checkpointing, card12.eager, card12.offload_blocks) == ("run", True, False, 0)
    # an edit dataset keeps the vision tower on the GPU: 9.9 GiB does not fit, 6 layers offloaded do
    edits = plan(11.4, vision_resident=True)
    assert (edits.action, edits.checkpointing, edits.eager, edits.offload_blocks) == ("adjust", True, True, 6)
    assert "6 of the 36 layers in host memory" in edits.message
    # references decide it when the caller does not say: their tokens mean the tower is needed
    refs = plan(11.4, reference_tokens=300, reference_count=1)
    assert refs.offload_blocks > 0
    # where compile or offload was chosen by hand, the plan does not override it: it refuses with the numbers
    assert plan(11.4, vision_resident=True, small_card_fallbacks=False).action == "refuse"
    assert plan(6.0).action == "refuse"  # not even 24 layers offloaded fit 4.5 GiB
    # bf16 has no such fallbacks
    bf16 = plan_training(
        FULL_SIZE,
        resolution=1024,
        batch=1,
        rank=16,
        checkpointing="auto",
        free_bytes=int(11.4 * GIB),
        total_bytes=int(11.4 * GIB),
        headroom_bytes=HEADROOM,
    )
    assert bf16.action == "refuse"


def test_the_vision_tower_bytes_are_read_from_the_checkpoint_headers(tmp_path):
    # a tiny checkpoint in the official layout: the vision tower's share from the safetensors headers alone
    import torch

    from core.loading import load_model
    from core.tiny import TinySpec, build_model, save_checkpoint

    model, tok = build_model(TinySpec())
    save_checkpoint(model, tmp_path / "m", tok, shards=2, dtype=torch.bfloat16)
    shape = ModelShape.from_checkpoint(tmp_path / "m")
    loaded = load_model(tmp_path / "m", torch.bfloat16)
    visual = sum(t.numel() * 2 for k, t in loaded.state_dict().items() if k.startswith("model.visual."))
    assert visual > 0 and shape.vision_bytes == visual


def test_auto_checkpointing_is_off_where_the_activations_fit_and_on_where_only_it_fits():
    h200 = train_plan(139.8, resolution=2048)
    assert (h200.action, h200.checkpointing) == ("run", False)  # the faster setting on a big card
    card24 = train_plan(23.4, resolution=2048)  # a 24 GB card, nothing else loaded
    assert (card24.action, card24.checkpointing) == ("run", True)


def test_checkpointing_off_is_turned_on_with_a_message_when_only_that_fits():
    p = train_plan(23.4, resolution=2048, checkpointing=False)
    assert (p.action, p.checkpointing) == ("adjust", True)
    # 36.8 GiB measured with the vision tower resident; a text-to-image run leaves its 1.07 GiB on the host
    assert "gradient checkpointing turned on" in p.message and "35.7 GiB" in p.message


def test_a_training_that_cannot_fit_is_refused_with_the_numbers_and_what_to_change():
    p = train_plan(23.4, resolution=2048, batch=8, checkpointing=True)
    assert p.action == "refuse" and not p.runs
    assert "not enough GPU memory" in p.message and "2048 px, batch 8" in p.message
    assert "23.4 GiB free" in p.message and "Lower the resolution or the batch size" in p.message
    with pytest.raises(ValueError, match="not enough GPU memory"):
        p.raise_if_refused()


def test_generation_counts_the_weights_only_when_they_are_not_resident():
    args = dict(width=2048, height=2048, images=4, cfg=True, total_bytes=int(24 * GIB), headroom_bytes=HEADROOM)
    cold = plan_generation(FULL_SIZE, weights_resident=False, free_bytes=int(23.4 * GIB), **args)
    warm = plan_generation(
        FULL_SIZE, weights_resident=True, free_bytes=int(23.4 * GIB - FULL_SIZE.weight_bytes), **args
    )
    assert cold.runs and warm.runs
    # a cold base counts its weights, less the vision tower the worker parks once they are loaded
    assert cold.need_bytes - warm.need_bytes == FULL_SIZE.weight_bytes - FULL_SIZE.vision_bytes
    small = plan_generation(FULL_SIZE, weights_resident=True, free_bytes=int(2 * GIB), **args)
    assert small.action == "refuse" and "4 image(s) of 2048x2048" in small.message


def test_a_parked_vision_tower_counts_only_for_a_request_with_references():
    kw = dict(width=1024, height=1024, images=1, cfg=True, weights_resident=True)
    plain = generation_need(FULL_SIZE, vision_parked=True, **kw)
    assert plain == generation_need(FULL_SIZE, vision_parked=False, **kw)  # text-to-image never brings it back
    refs = dict(kw, reference_tokens=1170)
    assert (
        generation_need(FULL_SIZE, vision_parked=True, **refs)
        - generation_need(FULL_SIZE, vision_parked=False, **refs)
        == FULL_SIZE.vision_bytes
    )
    # loading a base: its whole size while it loads, then without the tower, plus the activations
    cold = dict(width=2048, height=2048, images=1, cfg=True, base_precision="fp8")
    base = FULL_SIZE.base_bytes("fp8")
    act = generation_need(FULL_SIZE, weights_resident=True, **cold)
    assert generation_need(FULL_SIZE, **cold) == max(base, base - FULL_SIZE.vision_bytes + act)
    # so a 12 GB card (9.9 GiB after the headroom) now generates fp8 2048^2 (10.0 GiB with the tower)
    card = plan_generation(
        FULL_SIZE,
        weights_resident=False,
        free_bytes=int(11.4 * GIB),
        total_bytes=int(12 * GIB),
        headroom_bytes=HEADROOM,
        **cold,
    )
    assert card.runs
    assert generation_need(FULL_SIZE, parks_vision=False, **cold) > int(11.4 * GIB) - HEADROOM


def test_model_shape_is_read_from_the_checkpoint_without_loading_it(tiny_model):
    import json

    from core.loading import load_model

    shape = ModelShape.from_checkpoint(tiny_model)
    text = json.loads((tiny_model / "config.json").read_text())["text_config"]
    assert (shape.layers, shape.hidden, shape.mlp) == (
        text["num_hidden_layers"],
        text["hidden_size"],
        text["intermediate_size"],
    )
    model = load_model(tiny_model)  # float32 on disk: the plan counts the bf16 copy a GPU worker holds
    bf16_bytes = sum(p.numel() for p in model.state_dict().values()) * 2
    assert shape.weight_bytes == pytest.approx(bf16_bytes, rel=0.01)


def merge_mode(card_gib, precision="bf16", **kw):
    """The generation worker's LoRA mode on a card of card_gib with the full-size base loaded (1024^2, batch 4)."""
    free = (card_gib - FULL_SIZE.base_bytes(precision) / GIB) * GIB
    reserve = generation_need(FULL_SIZE, width=1024, height=1024, images=4, weights_resident=True) + HEADROOM
    args = dict(
        lora_max_rank=64,
        offload_blocks=0,
        copy_bytes=FULL_SIZE.merge_copy_bytes(precision),
    )
    return choose_lora_mode("auto", free_bytes=int(free), reserve_bytes=reserve, **{**args, **kw})


def test_loras_are_merged_where_the_kept_copy_fits_and_in_slots_elsewhere():
    assert FULL_SIZE.merge_copy_bytes("bf16") / GIB == pytest.approx(12.94, abs=0.01)
    # an fp8 base keeps its linears in full precision (merges round from them): the same bf16-sized copy
    assert FULL_SIZE.merge_copy_bytes("fp8") == FULL_SIZE.merge_copy_bytes("bf16")
    # bf16: 15.25 + 12.9 GiB + 2.8 GiB (4 images' activations, headroom) = 31 GiB: a 32 GB card merges, 28 not
    assert [merge_mode(g) for g in (24, 28, 32, 80)] == ["slots", "slots", "merge", "merge"]
    # fp8: 8.78 + 12.9 + 2.8 = 24.5 GiB: a 28 GB card merges, 24 not
    assert [merge_mode(g, "fp8") for g in (16, 24, 28, 141)] == ["slots", "slots", "merge", "merge"]
    assert merge_mode(24, lora_max_rank=0) == "hooks"  # slots turned off: forward hooks
    assert merge_mode(80, offload_blocks=4) == "slots"  # offloaded weights are streamed: never merged
    kw = dict(lora_max_rank=64, offload_blocks=0, free_bytes=None, copy_bytes=1, reserve_bytes=0)
    assert choose_lora_mode("auto", **kw) == "merge"  # not a GPU: host memory
    assert choose_lora_mode("slots", **kw) == "slots"
    with pytest.raises(ValueError, match="offload_blocks is set"):
        choose_lora_mode("merge", **{**kw, "offload_blocks": 2})
    with pytest.raises(ValueError, match="auto, merge or slots"):
        choose_lora_mode("fused", **kw)
    # README's table says the same (python -m worker.memory_plan [--fp8])
    row = memory_plan.card_table().splitlines()[-1]
    assert row.endswith("| slots | slots | merged (+12.9 GiB) | merged (+12.9 GiB) | merged (+12.9 GiB) |"), row
    row = memory_plan.card_table(base_precision="fp8").splitlines()[-1]
    assert row.endswith(
        "| slots | slots | slots | merged (+12.9 GiB) | merged (+12.9 GiB) | merged (+12.9 GiB) |"
    ), row


def test_the_merge_copy_estimate_is_what_merging_keeps(tiny_model):
    import torch

    from core.fp8 import convert_to_fp8
    from core.loading import load_model, read_weights
    from core.lora import full_weight_names, install_lora_merging, lora_merging, merge_copy_bytes

    shape = ModelShape.from_checkpoint(tiny_model)
    for precision in ("bf16", "fp8"):
        model = load_model(tiny_model, dtype=torch.bfloat16)
        if precision == "fp8":
            convert_to_fp8(model, matmul="weight_only")
        # as the worker does: an fp8 base's linears kept in full precision, read again from the checkpoint
        install_lora_merging(
            model, full_weights=read_weights(tiny_model, full_weight_names(model), torch.bfloat16)
        )
        kept = lora_merging(model).backup_bytes()
        assert merge_copy_bytes(model) == kept
        # the estimate is the decoder linears' part; the optional targets (x_embedder, final_layer2: under 0.1% at
        # full size, most of this tiny model's) are the rest
        decoder = sum(
            w.numel() * w.element_size() + (0 if sc is None else sc.numel() * 4)
            for path, (w, sc) in lora_merging(model).base.items()
            if ".layers." in path
        )
        assert decoder == shape.merge_copy_bytes(precision) and kept > decoder, (precision, kept, decoder)


# --------------------------------------------------------------------------------- the training worker
@pytest.fixture
def tctx(worker_ctx, tiny_model):
    settings = worker_ctx.settings.model_copy(update={"model_path": tiny_model, "progress_interval_s": 0.0})
    c = WorkerContext(settings)
    generation._host = None  # another test's resident host would count its own loads
    yield c
    c.close()
    generation._host = None


def _job(c, steps=2):
    from worker_helpers import put_dataset

    from db.owners import create_owner
    from db.training import create_training

    with c.sessions() as s:
        owner = create_owner(s, name="mem")
    ds = put_dataset(c, owner.id)
    p = {
        "steps": steps,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 1e-3,
        "resolution": 64,
        "batch_size": 1,
        "sample_every": 0,
        "sample_prompts": [],
        "seed": 3,
    }
    with c.sessions() as s:
        return create_training(
            s, owner_id=owner.id, dataset_id=ds.id, name="j", trigger="sks", params=p, total_steps=steps
        )


def _row(c, job_id):
    from db.training import get_training

    with c.sessions() as s:
        return get_training(s, job_id=job_id)


def test_training_releases_the_resident_generation_model_and_reloads_it_after(tctx, monkeypatch):
    import threading

    from core.train import Trainer

    c = tctx
    host = generation.host(c)
    host.model()
    assert host.loads == 1 and host._model is not None
    resident_while_training = []
    real_run = Trainer.run

    def run(self):
        resident_while_training.append(host._model is not None)
        return real_run(self)

    monkeypatch.setattr(Trainer, "run", run)
    assert training.run_training(_job(c).id, c) == "succeeded"
    assert resident_while_training == [False]  # one copy of the base: the trainer's
    for t in threading.enumerate():
        if t.name == "rewarm-generation":
            t.join(timeout=60)
    assert host._model is not None and host.loads == 2  # the generation side loaded again afterwards


def test_when_needed_keeps_the_generation_model_if_the_training_fits_beside_it(tctx, monkeypatch):
    c = WorkerContext(tctx.settings.model_copy(update={"training_releases_generation_model": "when_needed"}))
    host = generation.host(c)
    host.model()
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (80 * GIB, 80 * GIB))
    assert training.run_training(_job(c).id, c) == "succeeded"
    assert host._model is not None and host.loads == 1
    c.close()


def test_a_training_that_cannot_fit_fails_at_once_with_the_owner_message(tctx, monkeypatch):
    c = tctx
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (GIB // 1000, 24 * GIB))
    started = []
    monkeypatch.setattr("core.train.Trainer.run", lambda self: started.append(1))
    job = _job(c)
    assert training.run_training(job.id, c) == "failed"
    row = _row(c, job.id)
    assert row.status == "failed" and not started
    assert "not enough GPU memory" in row.error and "0.0 GiB free of 24.0 GiB" in row.error


def test_out_of_memory_mid_training_fails_the_job_with_a_message(tctx, monkeypatch):
    import torch

    c = tctx

    def oom(self, batches):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("core.train.Trainer.train_step", oom)
    job = _job(c)
    assert training.run_training(job.id, c) == "failed"
    row = _row(c, job.id)
    assert row.status == "failed"
    assert "the GPU ran out of memory during this training" in row.error
    assert "Tried to allocate 2.00 GiB" in row.error


# --------------------------------------------------------------------------------- the generation worker
def _generation(c, num_images=2):
    import uuid

    from db.generations import create_generation
    from db.owners import create_owner

    p = {
        "prompt": "a red circle",
        "negative_prompt": " ",
        "loras": [],
        "width": 64,
        "height": 32,
        "steps": 2,
        "guidance": 2.0,
        "seed": 7,
        "preset": "full",
        "num_images": num_images,
    }
    with c.sessions() as s:
        owner = create_owner(s, name=f"gen-{uuid.uuid4().hex[:8]}")
        return create_generation(
            s,
            owner_id=owner.id,
            prompt=p["prompt"],
            params=p,
            num_images=num_images,
            total_steps=p["steps"] * num_images,
        )


def _gen_row(c, gid):
    from db.generations import get_generation

    with c.sessions() as s:
        return get_generation(s, job_id=gid)


def test_a_generation_batch_that_cannot_fit_fails_with_the_owner_message(tctx, monkeypatch):
    c = tctx
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (GIB // 1000, 24 * GIB))
    g = _generation(c, num_images=3)
    assert generation.run_generation(g.id, c) == "failed"
    row = _gen_row(c, g.id)
    assert row.status == "failed" and "not enough GPU memory: 3 image(s) of 64x32" in row.error


def test_out_of_memory_mid_generation_fails_the_job_with_a_message(tctx, monkeypatch):
    import torch

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr("core.sampler.Sampler.sample", oom)
    g = _generation(tctx)
    assert generation.run_generation(g.id, tctx) == "failed"
    row = _gen_row(tctx, g.id)
    assert row.status == "failed" and "the GPU ran out of memory during this generation" in row.error


def test_the_training_worker_plans_a_text_to_image_run_without_the_vision_tower(tctx, monkeypatch):
    from core.train import TrainConfig

    c = tctx
    shape = ModelShape.from_checkpoint(c.settings.model_path)
    common = dict(resolution=64, batch=1, rank=4, checkpointing=True, base_precision="fp8")
    without, with_tower = training_need(shape, vision_resident=False, **common), training_need(shape, **common)
    assert without < with_tower
    headroom = int(c.settings.gpu_memory_headroom_gib * GIB)
    free = headroom + (without + with_tower) // 2  # fits only because the trainer leaves the tower on the host
    monkeypatch.setattr(memory_plan, "gpu_memory", lambda: (free, 12 * GIB))
    cfg = TrainConfig(
        model_path=str(c.settings.model_path),
        out_dir=str(c.settings.data_dir / "fit"),
        resolution=64,
        batch_size=1,
        rank=4,
        base_precision="fp8",
    )
    job = _job(c)
    fitted = training.fit_to_gpu(c, job, cfg)
    assert (fitted.compile, fitted.gradient_checkpointing, fitted.offload_blocks) == ("auto", True, 0)
    # a rank of a multi-GPU job keeps the tower (DDP wraps a module on one device): that does not fit here
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(memory_plan.MemoryPlanError, match="not enough GPU memory"):
        training.fit_to_gpu(c, job, cfg)
