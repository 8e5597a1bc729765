"""Kept denoise graphs (core.step_graphs): a request replays the last request's graph when its step reads tensors of
the same shapes, and then gives exactly what a sampler without graphs gives. On the CPU a GraphedCall runs its
function on the static buffers that a replay reads, so these tests check what a kept graph would compute: the
new prompt's prefix copied in, the key telling apart what a replay cannot see (shapes, LoRA slots on or off,
hooks). The same on real CUDA graphs: tests/core/test_sampler_gpu.py."""

from __future__ import annotations

import pytest
import torch

from core.lora import clear_loras, install_lora_slots, set_loras
from core.sampler import Sampler
from core.step_graphs import GraphedCall
from core.tiny import build_model
from tests.core.test_lora_slots import random_lora

ARGS = dict(width=64, height=32, steps=3, guidance=2.0, return_latents=True)


@pytest.fixture(scope="module")
def model_tok():
    torch.manual_seed(0)
    return build_model(seed=0)


def n_tokens(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


def test_the_next_request_of_the_same_shapes_replays_the_kept_step_with_its_own_prompt(model_tok):
    model, tok = model_tok
    first, second = "a red circle", "a blue square"
    assert n_tokens(tok, first) == n_tokens(tok, second)  # one prompt length: one key
    graphed, plain = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)

    a = graphed([first], seed=0, **ARGS)
    b = graphed([second], seed=5, **ARGS)

    assert (graphed.kept_steps.misses, graphed.kept_steps.hits) == (1, 1)
    ((call, _),) = graphed.kept_steps._kept.values()
    assert call.replays == 2 * ARGS["steps"] - 1  # every step of both requests but the very first capture
    torch.testing.assert_close(b, plain([second], seed=5, **ARGS), rtol=0, atol=0)
    torch.testing.assert_close(a, plain([first], seed=0, **ARGS), rtol=0, atol=0)
    assert not torch.equal(a, graphed([first], seed=5, **ARGS))  # the prompt, not only the seed, reached the step


def test_another_shape_captures_anew_and_replaces_the_kept_step(model_tok):
    model, tok = model_tok
    graphed, plain = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)
    long_prompt = "a small red circle in the top left on a light blue background"
    graphed(["a red circle"], seed=0, **ARGS)
    out = graphed([long_prompt], seed=1, **ARGS)
    wide = graphed(["a red circle"], seed=2, **{**ARGS, "width": 96})
    two = graphed(["a red circle"], seed=2, num_images=2, **ARGS)

    assert (graphed.kept_steps.misses, graphed.kept_steps.hits, len(graphed.kept_steps)) == (4, 0, 1)
    torch.testing.assert_close(out, plain([long_prompt], seed=1, **ARGS), rtol=0, atol=0)
    torch.testing.assert_close(wide, plain(["a red circle"], seed=2, **{**ARGS, "width": 96}), rtol=0, atol=0)
    torch.testing.assert_close(two, plain(["a red circle"], seed=2, num_images=2, **ARGS), rtol=0, atol=0)


def test_lora_slots_switching_on_is_another_key_and_a_switch_within_on_reuses_the_step(model_tok):
    _, tok = model_tok
    model, _ = build_model(seed=0, tokenizer=tok)
    install_lora_slots(model, capacity=8)
    a, b = random_lora(model, "a", 4, 1), random_lora(model, "b", 4, 2)
    graphed, plain = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)
    try:
        base = graphed(["a red circle"], seed=0, **ARGS)
        set_loras(model, [(a, 1.0)])
        with_a = graphed(["a red circle"], seed=0, **ARGS)  # slots on: the step runs other code, a new capture
        set_loras(model, [(b, 0.7)])
        with_b = graphed(["a red circle"], seed=0, **ARGS)  # other values in the same slots: a replay
        want_b = plain(["a red circle"], seed=0, **ARGS)
        set_loras(model, [(a, 1.0)])
        want_a = plain(["a red circle"], seed=0, **ARGS)
    finally:
        clear_loras(model)
    assert (graphed.kept_steps.misses, graphed.kept_steps.hits) == (2, 1)
    assert not torch.equal(base, with_a)
    torch.testing.assert_close(with_a, want_a, rtol=0, atol=0)
    torch.testing.assert_close(with_b, want_b, rtol=0, atol=0)


def test_nothing_is_kept_while_hooks_carry_a_lora(model_tok):
    """Plain hooks hold tensors made anew by each set_loras: a kept step would read the old LoRA."""
    model, tok = model_tok
    a, b = random_lora(model, "a", 4, 1), random_lora(model, "b", 4, 2)
    graphed, plain = Sampler(model, tok, cuda_graph=True), Sampler(model, tok)
    graphed(["a red circle"], seed=0, **ARGS)
    try:
        set_loras(model, [(a, 1.0)])
        graphed(["a red circle"], seed=0, **ARGS)
        set_loras(model, [(b, 1.0)])
        got = graphed(["a red circle"], seed=0, **ARGS)
        want = plain(["a red circle"], seed=0, **ARGS)
    finally:
        clear_loras(model)
    assert len(graphed.kept_steps) == 0 and graphed.kept_steps.hits == 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_graphed_call_refuses_inputs_of_another_shape():
    call = GraphedCall(lambda x: x * 2)
    call(torch.ones(2, 3))
    with pytest.raises(ValueError, match="changed from"):
        call(torch.ones(3, 3))
