"""LoRA slots: switching the LoRA set or its scales under a compiled denoise causes no recompilation and
gives what the forward-hook implementation gives, without writing the base weights."""

from __future__ import annotations

import pytest
import torch

from core.lora import (
    EXTRA_TARGETS,
    BoundLora,
    LoraSpec,
    active_lora_modules,
    clear_loras,
    install_lora_slots,
    lora_slots,
    remove_lora_slots,
    set_loras,
    slots_forced_on,
    slots_on,
    target_names,
)
from core.sampler import Sampler
from core.tiny import build_model

ARGS = dict(width=64, height=32, steps=2, guidance=2.0, seed=3, return_latents=True)
PROMPT = ["a red circle"]


def random_lora(model, name: str, rank: int, seed: int, extra=()) -> BoundLora:
    """A rank-`rank` LoRA on every recipe target (+ extra ones), big enough to change the output visibly."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    deltas = {}
    for path in target_names(model, LoraSpec(extra_targets=extra)):
        lin = mods[path]
        deltas[path] = (
            torch.randn(rank, lin.in_features, generator=g) * 0.3,
            torch.randn(lin.out_features, rank, generator=g) * 0.3,
        )
    return BoundLora(name=name, deltas=deltas, unplaced=[])


class CountingBackend:
    """A torch.compile backend that runs the traced graph eagerly and counts how often dynamo compiled."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    plain, tok = build_model(seed=0)
    slotted, _ = build_model(seed=0, tokenizer=tok)
    a, b = random_lora(plain, "a", 4, 1), random_lora(plain, "b", 4, 2, extra=("final_layer2",))
    return plain, slotted, tok, a, b


@pytest.mark.parametrize("scope", ["denoise", "layers"])
def test_switching_loras_and_scales_never_recompiles_and_matches_the_hooks(models, scope):
    plain, slotted, tok, a, b = models
    every_target = LoraSpec(extra_targets=tuple(EXTRA_TARGETS))  # the recipe's 14 + x_embedder + final_layer2
    assert install_lora_slots(slotted, capacity=8) == len(target_names(slotted, every_target)) == 17
    base_state = {k: v.clone() for k, v in slotted.state_dict().items()}
    backend = CountingBackend()
    fast = Sampler(slotted, tok, preview_every=0, compile=backend, compile_scope=scope)
    hooked = Sampler(plain, tok, preview_every=0)
    sequence = [
        ("A", [(a, 1.0)]),
        ("B", [(b, 1.0)]),
        ("none", []),
        ("A+B", [(a, 0.7), (b, -0.5)]),
        ("A", [(a, 1.0)]),
    ]
    outs, diffs, compiles_after_first = {}, {}, []
    # what the worker's warm-up does: the step's two variants, slots off (no LoRA) and on (any LoRA set)
    assert not slots_on(slotted)
    plain_z = fast(PROMPT, **ARGS)
    with slots_forced_on(slotted):
        assert torch.equal(fast(PROMPT, **ARGS), plain_z)  # zero slots add exact zeros
    assert not slots_on(slotted)
    first = backend.compiles
    for name, loras in sequence:
        set_loras(slotted, loras)
        assert slots_on(slotted) == bool(loras)
        z = fast(PROMPT, **ARGS)
        compiles_after_first.append(backend.compiles - first)
        set_loras(plain, loras)  # today's forward hooks, eager
        want = hooked(PROMPT, **ARGS)
        clear_loras(plain)
        diffs[name] = (z - want).abs().max().item()
        outs.setdefault(name, z)
    clear_loras(slotted)
    slotted.eager_layers()  # the next test compiles its own way
    # What matters: compiles for the two warm-up variants only, none for any later LoRA set or scale.
    assert first == 2 and compiles_after_first == [0, 0, 0, 0, 0], (first, compiles_after_first)
    assert torch.equal(outs["none"], plain_z)
    print(f"compiles: first call {first}, after it {compiles_after_first}; max |slots - hooks| {diffs}")
    assert max(diffs.values()) < 1e-4, diffs  # fp32 noise only
    assert (outs["A"] - outs["none"]).abs().max() > 1e-2  # the LoRAs really change the output
    assert (outs["A+B"] - outs["A"]).abs().max() > 1e-2
    # The base weights were never written, and the state dict has no extra keys.
    after = slotted.state_dict()
    assert after.keys() == base_state.keys() and all(torch.equal(after[k], v) for k, v in base_state.items())
    assert active_lora_modules(slotted) == 0


def test_more_ranks_than_the_capacity_fall_back_to_hooks_with_the_same_result(models):
    plain, _, tok, a, b = models
    small, _ = build_model(seed=0, tokenizer=tok)
    install_lora_slots(small, capacity=4)  # A fits (rank 4), A+B (rank 8) does not
    loras = [(a, 1.0), (b, 0.5)]
    set_loras(small, loras)
    assert active_lora_modules(small) == 15  # all through hooks this time
    got = Sampler(small, tok, preview_every=0)(PROMPT, **ARGS)
    set_loras(plain, loras)
    want = Sampler(plain, tok, preview_every=0)(PROMPT, **ARGS)
    clear_loras(plain)
    assert (got - want).abs().max().item() < 1e-4
    set_loras(small, [(a, 1.0)])  # fits again: slots, no hook left behind
    assert active_lora_modules(small) == 14 and not small._o1lora_hooks
    clear_loras(small)
    assert all(not m.o1_lora_down.any() and not m.o1_lora_up.any() for m in lora_slots(small).values())
    remove_lora_slots(small)
    assert not lora_slots(small) and not hasattr(
        dict(small.named_modules())[target_names(small, LoraSpec())[0]], "o1_lora_down"
    )
