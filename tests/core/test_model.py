"""HiDreamO1 behaviour beyond the goldens: prefix cache, padded batches, dense oracle, bf16 rotary, training."""

from __future__ import annotations

import pytest
import torch

from core.layout import build_t2i, collate, layout_from_ids
from core.model import PrefixCache
from core.tiny import TinySpec, build_model

H, W = 64, 96  # 6 image tokens
ATOL = 2e-5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(TinySpec(), seed=1)


def vinputs_for(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch.batch_size, batch.n_image, 3072, generator=g)


@torch.no_grad()
def full(model, batch, v, t):
    return model(**batch.model_inputs(v, t)).x_pred


def test_prefix_then_denoise_equals_forward(tiny):
    model, tok = tiny
    batch = collate([build_t2i(tok, "a red circle on the left", H, W), build_t2i(tok, "two blue squares", H, W)])
    assert batch.padded  # prompts differ in length: the padded path is exercised too
    v, t = vinputs_for(batch), torch.tensor([0.2, 0.9])
    ref = full(model, batch, v, t)[batch.vinput_mask].view(2, batch.n_image, -1)
    with torch.no_grad():
        prefix = model.encode_prefix(batch)
        for step_t in (t, t.flip(0)):  # the same prefix serves every step
            out = model.denoise(prefix, v, step_t)
            expect = full(model, batch, v, step_t)[batch.vinput_mask].view(2, batch.n_image, -1)
            torch.testing.assert_close(out, expect, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(model.denoise(prefix, v, t), ref, atol=ATOL, rtol=ATOL)


def test_prefix_expand_gives_copies_per_prompt(tiny):
    model, tok = tiny
    batch = collate([build_t2i(tok, "a star", H, W), build_t2i(tok, "a big yellow triangle at the top", H, W)])
    with torch.no_grad():
        prefix = model.encode_prefix(batch)
        big = prefix.expand(3)
        assert isinstance(big, PrefixCache) and big.batch_size == 6
        v = torch.randn(6, batch.n_image, 3072)
        out = model.denoise(big, v, torch.full((6,), 0.4))
        for i in range(6):
            one = model.denoise(prefix, v[i : i + 1].expand(2, -1, -1), torch.full((2,), 0.4))[i // 3]
            torch.testing.assert_close(out[i], one, atol=ATOL, rtol=ATOL)
        # select: arbitrary rows (e.g. cond for every image, then uncond for every image)
        picked = prefix.select(torch.tensor([1, 1, 0]))
        out2 = model.denoise(picked, v[:3], torch.full((3,), 0.4))
        torch.testing.assert_close(
            out2[0], model.denoise(prefix, v[:2].flip(0), torch.full((2,), 0.4))[1], atol=ATOL, rtol=ATOL
        )


def test_padded_batch_equals_each_sample_alone(tiny):
    model, tok = tiny
    prompts = ["a red circle", "a small green square in the bottom right of the scene", " "]
    samples = [build_t2i(tok, p, H, W) for p in prompts]
    batch = collate(samples)
    assert len(set(batch.text_lengths.tolist())) == 3
    v, t = vinputs_for(batch, 3), torch.tensor([0.1, 0.5, 0.95])
    out = full(model, batch, v, t)
    for i, s in enumerate(samples):
        alone = full(model, collate([s]), v[i : i + 1], t[i : i + 1])[0]
        a = s.text_length - 1
        rows = torch.cat([torch.arange(a), torch.arange(batch.input_ids.shape[1] - 1, out.shape[1])])
        torch.testing.assert_close(out[i, rows], alone, atol=ATOL, rtol=ATOL)
        assert torch.isfinite(out[i]).all()  # pad rows too


def test_reference_forward_equals_split_forward(tiny):
    model, tok = tiny
    batch = collate([build_t2i(tok, "one white circle", H, W), build_t2i(tok, "blue", H, W)])
    v, t = vinputs_for(batch, 5), torch.tensor([0.3, 0.7])
    out = full(model, batch, v, t)
    ref = model.reference_forward(**batch.model_inputs(v, t)).x_pred
    real = torch.ones_like(batch.token_types, dtype=torch.bool)
    for i, n in enumerate(batch.text_lengths.tolist()):  # pad rows are not compared
        real[i, n - 1 : batch.input_ids.shape[1] - 1] = False
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=ATOL)


def test_text_rows_ignore_image_and_timestep(tiny):
    """AR tokens attend causally to AR tokens only: their outputs do not move with the image or t."""
    model, tok = tiny
    batch = collate([build_t2i(tok, "a red circle", H, W)])
    n_ar = batch.input_ids.shape[1] - 1
    a = full(model, batch, vinputs_for(batch, 1), torch.tensor([0.1]))
    b = full(model, batch, vinputs_for(batch, 2), torch.tensor([0.8]))
    torch.testing.assert_close(a[:, :n_ar], b[:, :n_ar], atol=0, rtol=0)
    assert (a[:, n_ar:] - b[:, n_ar:]).abs().max() > 1e-2


def test_layout_errors_are_clear(tiny):
    model, tok = tiny
    batch = collate([build_t2i(tok, "a star", H, W)])
    kw = batch.model_inputs(vinputs_for(batch), torch.tensor([0.5]))
    kw["input_ids"] = kw["input_ids"][:, :-1]
    with pytest.raises(ValueError, match="tms"):
        model(**kw)
    kw = batch.model_inputs(vinputs_for(batch)[:, :4], torch.tensor([0.5]))
    with pytest.raises(ValueError, match="token_types has length"):
        model(**kw)
    with pytest.raises(ValueError, match="image positions"):
        model.denoise(model.encode_prefix(batch), vinputs_for(batch)[:, :4], 0.5)


def test_rotary_stays_float32_in_bf16(tiny):
    """At positions >= 4096 bf16 inverse frequencies would drift the phases by far more than bf16 rounding."""
    model, tok = tiny
    bf = build_model(TinySpec(), tok, seed=1)[0].to(torch.bfloat16)
    rot32, rot16 = model.model.language_model.rotary_emb, bf.model.language_model.rotary_emb
    assert rot16.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rot16.inv_freq, rot32.inv_freq, atol=0, rtol=0)
    pos = torch.arange(4096, 4096 + 64).view(1, 1, -1).expand(3, 1, -1)
    x = torch.zeros(1, 1, dtype=torch.float32)
    cos32, sin32 = rot32(x, pos)
    cos16, sin16 = rot16(x, pos)
    torch.testing.assert_close(cos16, cos32, atol=0, rtol=0)
    torch.testing.assert_close(sin16, sin32, atol=0, rtol=0)
    # the failure this guards against: the same rotary with bf16-rounded frequencies
    drift = (pos[0, 0, :, None].float() * rot32.inv_freq.to(torch.bfloat16).float()).cos()
    exact = (pos[0, 0, :, None].float() * rot32.inv_freq).cos()
    assert (drift - exact).abs().max() > 0.05
    # and a bf16 forward stays close to the float32 one
    batch = collate([build_t2i(tok, "a red circle", H, W)])
    v = vinputs_for(batch)
    with torch.no_grad():
        y32 = full(model, batch, v, torch.tensor([0.5]))
        y16 = bf(**batch.model_inputs(v.bfloat16(), torch.tensor([0.5]))).x_pred.float()
    assert (y16 - y32).abs().max() < 0.1 * y32.abs().max()


def test_gradient_checkpointing_gives_same_grads(tiny):
    model, tok = tiny
    batch = collate([build_t2i(tok, "a red circle", H, W), build_t2i(tok, "a blue star", H, W)])
    v, t = vinputs_for(batch), torch.tensor([0.3, 0.6])
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.train()
        model.gradient_checkpointing = ckpt
        out = model(**batch.model_inputs(v, t)).x_pred
        out[batch.vinput_mask].float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.gradient_checkpointing = False
    model.eval()
    model.zero_grad()
    assert (
        grads[0].keys() == grads[1].keys() and "model.language_model.layers.0.self_attn.q_proj.weight" in grads[0]
    )
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4)


def test_peft_wraps_language_model_linears_and_trains(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    fresh = build_model(TinySpec(), tok, seed=1)[0]
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=r".*language_model.*\.(" + "|".join(targets) + ")",
        init_lora_weights=True,
    )
    peft_model = get_peft_model(fresh, cfg)
    wrapped = [n for n, m in peft_model.named_modules() if n.endswith("lora_A")]
    assert len(wrapped) == 7 * fresh.config.text_config.num_hidden_layers
    batch = collate([build_t2i(tok, "a red circle", H, W)])
    v, t = vinputs_for(batch), torch.tensor([0.5])
    with torch.no_grad():  # zero-initialised B: the wrapped model still computes the base output
        torch.testing.assert_close(peft_model(**batch.model_inputs(v, t)).x_pred, full(model, batch, v, t))
    peft_model.train()
    fresh.gradient_checkpointing = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = peft_model(**batch.model_inputs(v, t)).x_pred
    loss = out[batch.vinput_mask].float().sub(v[0]).pow(2).mean()
    loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)


def test_edit_prefix_with_vision_tower_equals_forward(tiny):
    """Reference images: vision features + DeepStack in the prefix, raw reference patches in denoise."""
    model, tok = tiny
    vocab = tok.get_vocab()
    pad = model.config.image_token_id
    grid = torch.tensor([[1, 4, 6]])  # 24 vision patches -> 2x3 merged placeholders
    ids = (
        [vocab["<|im_start|>"], 10, vocab["<|vision_start|>"]]
        + [pad] * 6
        + [vocab["<|vision_end|>"], 11, 12, vocab["<|boi_token|>"], vocab["<|tms_token|>"]]
    )
    sample = layout_from_ids(ids, H, W, image_pad_id=pad, vlm_grids=[(2, 3)], ref_sizes=[(32, 64)])
    g = torch.Generator().manual_seed(4)
    sample.pixel_values = torch.randn(24, 1536, generator=g)
    sample.image_grid_thw = grid
    sample.ref_patches = torch.rand(2, 3072, generator=g) * 2 - 1
    batch = collate([sample])
    v = batch.vinputs(torch.randn(1, batch.n_image, 3072, generator=g))
    t = torch.tensor([0.4])
    with torch.no_grad():
        out = full(model, batch, v, t)
        prefix = model.encode_prefix(batch)
        den = model.denoise(prefix, v, t)
        ref = model.reference_forward(**batch.model_inputs(v, t)).x_pred
        no_image = model(**{**batch.model_inputs(v, t), "pixel_values": None, "image_grid_thw": None}).x_pred
    torch.testing.assert_close(den, out[batch.vinput_mask].view(1, 8, -1), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    assert (no_image - out)[batch.vinput_mask].abs().max() > 1e-3  # the vision tower matters


def test_a_grouped_prefix_attends_without_a_mask_and_gives_the_masked_result(tiny):
    """CFG rows (2 of the prompt, 2 of a shorter negative): grouped, each run of rows sees only its own real
    prompt keys (no mask, no pads); the denoise equals the padded, masked one. Batches of one length or of more
    than two runs stay masked."""
    model, tok = tiny
    prompt, negative = "a small green square in the bottom right", " "
    batch = collate([build_t2i(tok, prompt, H, W), build_t2i(tok, negative, H, W)])
    with torch.no_grad():
        prefix = model.encode_prefix(batch).select(torch.tensor([0, 0, 1, 1]))
        grouped = prefix.grouped()
        lengths = [s.text_length - 1 for s in (build_t2i(tok, prompt, H, W), build_t2i(tok, negative, H, W))]
        assert grouped.groups == (2, 2) and grouped.key_mask(5) is None and prefix.key_mask(5) is not None
        assert [k.shape[2] for k, _ in grouped.kv[0]] == lengths  # the negative's keys are cut, not masked
        v, t = torch.randn(4, batch.n_image, 3072), torch.tensor([0.2, 0.7, 0.2, 0.7])
        torch.testing.assert_close(model.denoise(grouped, v, t), model.denoise(prefix, v, t), atol=ATOL, rtol=ATOL)
        three = model.encode_prefix(
            collate([build_t2i(tok, p, H, W) for p in ("a red circle", "two blue squares at the top", " ")])
        )
        with pytest.raises(ValueError, match="group them"):
            grouped.select(torch.tensor([0]))
        assert three.grouped() is three  # three runs: masked
        same = model.encode_prefix(batch).select(torch.tensor([0, 0]))
        assert same.grouped() is same  # one length: nothing to cut
