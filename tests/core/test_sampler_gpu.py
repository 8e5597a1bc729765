"""GPU-only: the CUDA-graph replay of the denoise call gives the eager sampler's images."""

from __future__ import annotations

import pytest
import torch

from core.sampler import GraphedCall, Sampler
from core.tiny import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_sampler_equals_eager(dtype):
    model, tok = build_model()
    model = model.to("cuda", dtype)
    kw = dict(width=64, height=96, steps=6, seed=1, num_images=2, return_latents=True)
    eager = Sampler(model, tok)(["a red circle", "two blue squares"], **kw)
    graphed = Sampler(model, tok, cuda_graph=True)(["a red circle", "two blue squares"], **kw)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(graphed.float(), eager.float(), rtol=0, atol=tol)


def test_graphed_call_replays_with_new_inputs():
    w = torch.randn(64, 64, device="cuda")
    call = GraphedCall(lambda x: torch.tanh(x @ w))
    for _ in range(3):
        x = torch.randn(8, 64, device="cuda")
        torch.testing.assert_close(call(x).clone(), torch.tanh(x @ w))
    assert call.failed is None and call.graph is not None


def test_flash_noise_stream_is_the_official_global_one():
    """The official pipeline seeds the global CUDA RNG with seed + 1 and the flash scheduler draws from it;
    our per-image generator seeded the same gives the same draws."""
    torch.cuda.manual_seed_all(33)
    want = [torch.randn((1, 4, 3072), device="cuda") for _ in range(3)]
    g = torch.Generator("cuda").manual_seed(33)
    got = [torch.randn((1, 4, 3072), generator=g, device="cuda") for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_kept_graph_replays_the_next_prompt_of_its_length_as_eager_gives_it():
    model, tok = build_model()
    model = model.to("cuda", torch.bfloat16)
    kw = dict(width=64, height=96, steps=6, guidance=3.0, return_latents=True)
    graphed, eager = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)
    graphed(["a red circle"], seed=0, **kw)
    got = graphed(["a blue square"], seed=4, **kw)  # the same token count: the kept graph, from its first step
    assert (graphed.kept_steps.misses, graphed.kept_steps.hits) == (1, 1)
    torch.testing.assert_close(got.float(), eager(["a blue square"], seed=4, **kw).float(), rtol=0, atol=5e-2)


def test_a_kept_graph_reads_a_lora_merged_after_its_capture():
    """Merging writes the weights in place, so a kept graph replays with the LoRA merged since (no stale weights)."""
    from core.lora import clear_loras, install_lora_merging, remove_lora_merging, set_loras
    from tests.core.test_lora_slots import random_lora

    model, tok = build_model()
    model = model.to("cuda", torch.bfloat16)
    lora = random_lora(model, "a", 4, 1)
    install_lora_merging(model)
    kw = dict(width=64, height=96, steps=6, guidance=3.0, seed=2, return_latents=True)
    graphed, eager = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)
    try:
        plain = graphed(["a red circle"], **kw)
        set_loras(model, [(lora, 1.0)])
        merged = graphed(["a red circle"], **kw)  # the graph captured above, replayed
        want = eager(["a red circle"], **kw)
    finally:
        clear_loras(model)
        remove_lora_merging(model)
    assert graphed.kept_steps.hits == 1
    assert (merged.float() - plain.float()).abs().max() > 0.1  # the LoRA changes the image ...
    torch.testing.assert_close(merged.float(), want.float(), rtol=0, atol=5e-2)  # ... as eager draws it
