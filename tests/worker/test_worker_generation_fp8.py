"""The generation worker with an fp8 base and offloaded layers (O1LORA_GENERATE_BASE_PRECISION /
O1LORA_GENERATE_OFFLOAD_BLOCKS): the resident model is built that way, LoRAs apply through the slots as on a
bf16 base, and the images are close to the bf16 worker's."""

from __future__ import annotations

import numpy as np
from test_worker_generation import gctx, make_lora, new_generation  # noqa: F401 (fixtures)
from test_worker_generation_fast import pixels

from db.owners import create_owner
from worker import generation
from worker.context import WorkerContext


def test_fp8_offloaded_worker_generates_with_a_lora_like_the_bf16_one(gctx, monkeypatch):
    from core.fp8 import fp8_linears
    from core.offload import block_offload

    with gctx.sessions() as s:
        owner = create_owner(s, name="fp8")
    lora = make_lora(gctx, gctx.settings.model_path, owner.id, seed=1)
    images = {}
    for precision, offload in (("bf16", 0), ("fp8", 1)):
        c = WorkerContext(
            gctx.settings.model_copy(
                update={
                    "generate_base_precision": precision,
                    "generate_offload_blocks": offload,
                    "lora_max_rank": 8,
                }
            )
        )
        monkeypatch.setattr(generation, "_host", None)
        gen = new_generation(c, owner.id, loras=[{"id": lora, "scale": 1.0}], num_images=1, seed=3)
        assert generation.run_generation(gen.id, c) == "succeeded"
        model = generation._host.model()
        assert bool(fp8_linears(model)) == (precision == "fp8")
        assert (block_offload(model) is not None) == bool(offload)
        assert generation._host.cached_lora_ids() == [lora]
        images[precision] = pixels(c, gen.id)[0]
        plain = new_generation(c, owner.id, num_images=1, seed=3)
        assert generation.run_generation(plain.id, c) == "succeeded"
        images[precision + " no LoRA"] = pixels(c, plain.id)[0]
        c.close()
    diff = np.abs(images["fp8"] - images["bf16"])
    lora_effect = np.abs(images["fp8"] - images["fp8 no LoRA"]).mean()
    print(f"fp8 + offload vs bf16 worker: mean {diff.mean():.2f}, max {diff.max()}; LoRA effect {lora_effect:.1f}")
    assert diff.mean() < 8  # 0-255 levels (a different but close image; identical would mean fp8 did nothing)
    assert diff.max() > 0
    assert lora_effect > 4 * diff.mean()  # the LoRA acts on the fp8 base, and far more than fp8 moves the image


def test_an_fp8_worker_merges_loras_from_the_full_precision_linears_and_restores_its_base(gctx, monkeypatch):
    """O1LORA_LORA_APPLY=merge on an fp8 base: the linears are kept in full precision (read again from the
    checkpoint), the LoRA image is the slots' within fp8 rounding, and a plain request after it gives the plain
    image exactly (un-merging re-quantises to the loaded weights)."""
    from test_worker_generation_fast import plain_lora_plain

    from core.fp8 import fp8_linears
    from core.lora import lora_merging

    c = gctx
    with c.sessions() as s:
        owner = create_owner(s, name="fp8m")
    lora = make_lora(c, c.settings.model_path, owner.id, seed=3)
    images = {}
    for mode in ("slots", "merge"):
        h, by_mode = plain_lora_plain(monkeypatch, c, owner.id, lora, mode, base_precision="fp8")
        images.update(by_mode)
        model = h.model()
        assert fp8_linears(model)
        if mode == "merge":
            kept = lora_merging(model).base
            fp8_kept = [w for p, (w, scale) in kept.items() if p in fp8_linears(model)]
            assert fp8_kept and all(w.dtype == model.dtype for w in fp8_kept)  # full precision, not e4m3
    lora_effect = np.abs(images["slots", "lora"] - images["slots", "plain"]).mean()
    merged_vs_slots = np.abs(images["merge", "lora"] - images["slots", "lora"]).mean()
    print(f"fp8 worker: LoRA effect {lora_effect:.2f} levels, merged vs slots {merged_vs_slots:.2f}")
    assert lora_effect > 5 * merged_vs_slots
    for mode in ("slots", "merge"):
        assert np.array_equal(images[mode, "plain after"], images[mode, "plain"])
    assert np.array_equal(images["merge", "plain"], images["slots", "plain"])
