"""GPU checks at a realistic sequence length (1024x1024 -> 1024 image tokens), bf16 autocast.

.venv/bin/python -m pytest tests/core/test_model_gpu.py -m gpu -q
O1LORA_GPU_TINY=1 .venv/bin/python -m pytest tests/core/test_model_gpu.py -m gpu -q   # CPU smoke, tiny shapes
"""

from __future__ import annotations

import os

import pytest
import torch

from core.layout import build_t2i, collate
from core.tiny import TinySpec, build_model

SMOKE = os.environ.get("O1LORA_GPU_TINY") == "1"  # run the same code on the CPU at toy sizes
DEVICE = "cpu" if SMOKE else "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not SMOKE and not torch.cuda.is_available(), reason="needs CUDA"),
]
SIZE = 64 if SMOKE else 1024
SPEC = TinySpec() if SMOKE else TinySpec(hidden=1024, layers=4, heads=8, kv_heads=2, head_dim=128, mlp=2048)


@pytest.fixture(scope="module")
def setup():
    model, tok = build_model(SPEC, seed=0)
    model = model.to(DEVICE, torch.bfloat16)
    texts = ["a red circle on the left of a large blue square", " "]
    batch = collate([build_t2i(tok, t, SIZE, SIZE) for t in texts]).to(DEVICE)
    g = torch.Generator().manual_seed(0)
    v = (8 * torch.randn(2, batch.n_image, 3072, generator=g)).to(DEVICE, torch.bfloat16)
    return model, batch, v


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def test_split_prefix_and_dense_agree_in_bf16(setup):
    model, batch, v = setup
    t = torch.tensor([0.3, 0.3], device=DEVICE)
    out = model(**batch.model_inputs(v, t)).x_pred[batch.vinput_mask].view(2, batch.n_image, -1)
    dense = (
        model.reference_forward(**batch.model_inputs(v, t)).x_pred[batch.vinput_mask].view(2, batch.n_image, -1)
    )
    den = model.denoise(model.encode_prefix(batch), v, t)
    assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert rel(out, dense) < 2e-2 and rel(den, out) < 2e-2, (rel(out, dense), rel(den, out))


def test_split_attention_uses_less_memory_than_dense(setup):
    if SMOKE:
        pytest.skip("memory statistics need CUDA")
    model, batch, v = setup
    t = torch.tensor([0.3, 0.3], device=DEVICE)
    peaks = []
    for fn in (model.forward, model.reference_forward):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn(**batch.model_inputs(v, t))
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[0] <= peaks[1], peaks


def test_training_step_with_checkpointing_and_autocast(setup):
    model, batch, v = setup
    model.float().train()
    model.gradient_checkpointing = True
    try:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(**batch.model_inputs(v.float(), torch.tensor([0.2, 0.9], device=DEVICE))).x_pred
        loss = out[batch.vinput_mask].float().pow(2).mean()
        loss.backward()
        grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = False
        model.eval().to(torch.bfloat16)


REAL = os.environ.get("O1LORA_REAL_MODEL")  # a real HiDream-O1-Image folder, e.g. on the GPU machine


@pytest.mark.skipif(not REAL or SMOKE, reason="set O1LORA_REAL_MODEL to a real checkpoint folder (CUDA)")
@torch.no_grad()
def test_real_checkpoint_loads_and_split_matches_dense():
    from core.loading import load_model, load_tokenizer

    model = load_model(REAL, dtype=torch.bfloat16, device="cuda")
    tok = load_tokenizer(REAL)
    assert model.boi_token_id is not None and model.tms_token_id == tok.get_vocab()["<|tms_token|>"]
    assert sum(p.numel() for p in model.parameters()) > 7e9
    assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    batch = collate(
        [build_t2i(tok, "a red fox in the snow, photograph", 1024, 1024), build_t2i(tok, " ", 1024, 1024)]
    )
    batch = batch.to("cuda")
    v = (8 * torch.randn(2, batch.n_image, 3072, generator=torch.Generator().manual_seed(0))).cuda().bfloat16()
    t = torch.tensor([0.05, 0.05], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**batch.model_inputs(v, t)).x_pred[batch.vinput_mask].view(2, batch.n_image, -1)
        dense = (
            model.reference_forward(**batch.model_inputs(v, t))
            .x_pred[batch.vinput_mask]
            .view(2, batch.n_image, -1)
        )
        den = model.denoise(model.encode_prefix(batch), v, t)
    assert rel(out, dense) < 2e-2 and rel(den, out) < 2e-2, (rel(out, dense), rel(den, out))
