"""Block offload (core/offload.py) on the CPU: which layers, which copy is queued when, and outputs and LoRA
gradients equal (exactly) to the model without offload, for generation and for checkpointed training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_train_config

from core.layout import build_t2i, collate
from core.loading import load_model
from core.lora import LoraSpec, inject_lora, lora_parameters
from core.offload import BlockOffload, block_offload, offloaded_layers
from core.tiny import TinySpec, build_model, build_tokenizer, save_checkpoint

SPEC = TinySpec(hidden=64, layers=6, heads=4, kv_heads=2, head_dim=16, mlp=128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = build_tokenizer()
    model, _ = build_model(SPEC, tok, seed=5)
    return save_checkpoint(model, tmp_path_factory.mktemp("offload") / "tiny", tok), tok


def test_offloaded_layers_are_spread_over_the_depth():
    assert offloaded_layers(36, 12) == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34]
    assert offloaded_layers(6, 3) == [1, 3, 5]
    assert offloaded_layers(6, 0) == [] and offloaded_layers(4, 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="offload_blocks must be >= 0"):
        offloaded_layers(6, -1)


def _inputs(tok, seed):
    batch = collate([build_t2i(tok, "a blue star at the top", 64, 64)])
    g = torch.Generator().manual_seed(seed)
    return batch.model_inputs(torch.randn(1, batch.n_image, 3072, generator=g), 0.6)


def fetches(off):
    return [(e[1], e[2]) for e in off.events if e[0] == "fetch"]


def test_loading_with_offload_keeps_those_layers_on_the_host(tiny):
    path, _ = tiny
    model = load_model(path, offload_blocks=3)
    off = block_offload(model)
    assert off.indices == [1, 3, 5] and len(off.slots) == 2
    layers = model.model.language_model.layers
    for i in off.indices:  # nothing of an offloaded layer in "device" memory until its turn
        assert all(p.numel() == 0 for p in layers[i].parameters())
    assert all(p.numel() > 0 for p in layers[0].parameters())
    per_layer = sum(p.numel() * p.element_size() for p in layers[0].parameters())
    assert off.host_bytes == 3 * per_layer


def test_generation_schedule_prefetches_the_next_layer_and_wraps_around(tiny):
    path, tok = tiny
    plain, model = load_model(path), load_model(path, offload_blocks=3)
    off = block_offload(model)
    with torch.no_grad():
        for seed in (0, 1):  # two "steps"
            inputs = _inputs(tok, seed)
            assert torch.equal(model(**inputs).x_pred, plain(**inputs).x_pred)
    # first step: layer 1 on demand (nothing was prefetched yet), then each layer's copy is queued when the one
    # before it starts; at the last one the first is queued again for the next step: one demand copy in all
    assert fetches(off) == [
        (1, "demand"),
        (3, "prefetch"),
        (5, "prefetch"),
        (1, "prefetch"),
        (3, "prefetch"),
        (5, "prefetch"),
        (1, "prefetch"),
    ]
    # two slots: the layer that ran last and the one queued for the next step
    assert sorted(h for h in off.held if h is not None) == [1, 5]


def test_training_schedule_runs_backwards_in_the_backward_and_gradients_are_exact(tiny):
    path, tok = tiny
    grads, models = {}, {}
    for n in (0, 3):
        model = load_model(path, offload_blocks=n)
        torch.manual_seed(0)
        inject_lora(model, LoraSpec(rank=4))
        for p in lora_parameters(model):
            torch.nn.init.normal_(p, std=0.1)  # B non-zero: gradients reach every layer's input
        model.train()
        model.gradient_checkpointing_enable()
        for step in range(2):
            loss = model(**_inputs(tok, step)).x_pred.square().mean()
            loss.backward()
        grads[n] = [p.grad.clone() for p in lora_parameters(model)]
        models[n] = model
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[3]))
    off = block_offload(models[3])
    # step 1, forward: 1 on demand, 3 queued as 1 starts, 5 as 3 starts (into 1's slot); nothing after 5.
    # Backward (recomputing 5, 3, 1): 5 and 3 are still in their slots, 1 is queued as 3 starts (into 5's).
    # Step 2 starts at 1, still resident: from then on every copy is a prefetch, two per step.
    assert fetches(off) == [(1, "demand"), (3, "prefetch"), (5, "prefetch"), (1, "prefetch")] + [
        (5, "prefetch"),
        (1, "prefetch"),
    ]
    entered = [e[1] for e in off.events if e[0] == "enter"]
    assert entered == [1, 3, 5, 5, 3, 1] * 2


def test_training_with_offload_and_without_checkpointing_is_refused(tiny):
    path, tok = tiny
    model = load_model(path, offload_blocks=2)
    inject_lora(model, LoraSpec(rank=4))
    model.train()
    with pytest.raises(RuntimeError, match="needs gradient checkpointing"):
        model(**_inputs(tok, 0))


def test_offload_installed_on_a_built_model_and_removed_again(tiny):
    path, tok = tiny
    model = load_model(path)
    inputs = _inputs(tok, 3)
    with torch.no_grad():
        want = model(**inputs).x_pred
        off = BlockOffload(model, 2)
        assert torch.equal(model(**inputs).x_pred, want)
        off.remove()
        assert block_offload(model) is None
        assert torch.equal(model(**inputs).x_pred, want)
    assert all(p.numel() > 0 for p in model.parameters())


def test_trainer_with_offload_trains_the_same_lora(tiny, tmp_path):
    from core.train import Trainer, TrainResult  # noqa: F401

    path, _ = tiny
    data = tmp_path / "data"
    data.mkdir()
    for i, c in enumerate([(200, 40, 40), (40, 200, 40)]):
        Image.fromarray(np.full((64, 64, 3), c, np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a flat square number {i}")
    weights = {}
    for n in (0, 2):
        cfg = tiny_train_config(
            path,
            data,
            tmp_path / f"run{n}",
            steps=2,
            offload_blocks=n,
            gradient_checkpointing="auto" if n else True,
        )
        trainer = Trainer(cfg)
        assert trainer.checkpointing  # offload turns it on
        trainer.run()
        weights[n] = [p.detach().clone() for p in lora_parameters(trainer.model)]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[2]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_streams_give_the_resident_models_outputs_and_gradients(tiny):
    """The CUDA path (pinned host copies, a side stream, events): equal to the resident model, forward and
    checkpointed backward, and every copy after the first one a prefetch."""
    path, tok = tiny
    inputs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in _inputs(tok, 0).items()}
    grads, outs = {}, {}
    for n in (0, 3):
        model = load_model(path, torch.float32, "cuda", offload_blocks=n)
        with torch.no_grad():
            outs[n] = model(**inputs).x_pred
        torch.manual_seed(0)
        inject_lora(model, LoraSpec(rank=4))
        for p in lora_parameters(model):
            torch.nn.init.normal_(p, std=0.1)
        model.train()
        model.gradient_checkpointing_enable()
        model(**inputs).x_pred.square().mean().backward()
        grads[n] = [p.grad for p in lora_parameters(model)]
        if n:
            assert sum(1 for e in block_offload(model).events if e[0] == "fetch" and e[2] == "demand") == 1
    assert torch.equal(outs[0], outs[3])
    # (attention backward kernels may accumulate in another order from run to run: close, not equal)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads[0], grads[3]))
