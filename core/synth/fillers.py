"""Words around a scene sentence that say nothing about the scene, for pretraining the bundled model.

    with_filler("a small red circle in the top left on a white background", seed=128, index=5, prob=0.3)
    # -> "in calm style, a small red circle ..." or "..., a tidy drawing" or the caption unchanged

Why: a model pretrained on one fixed grammar reads a caption by token position, so any phrase in front of the
scene (a LoRA's trigger, "in shaded style, ...") moves its shapes and colours (docs/evidence.md, sections 2 and
5), and a LoRA has to relearn placement before it can learn its style. Captions that sometimes carry a phrase
in front or behind teach the base to find the scene wherever it starts, as a real text-to-image model does.
The style words of the LoRA sets (core.synth.render.STYLES) and their triggers' words never appear, so a
trigger is still a phrase the base has no meaning for.
"""

from __future__ import annotations

import random

# Adjectives with no meaning in the shape world. Not here: plain, hatched, outlined, shaded, ink, bold, outline
# (the LoRA sets' styles and triggers), nor any colour, size, shape or place word of core.synth.vocab.
WORDS = (
    "simple flat clean soft neat tidy crisp smooth calm quiet vivid classic modern retro minimal gentle "
    "sunny happy cosy cheerful careful quick rough friendly playful old new nice fine clear warm cool still"
).split()

TEMPLATES = (
    "in {w} style",
    "{w} style",
    "a {w} picture",
    "a {w} drawing",
    "a {w} image",
    "{w} and {v}",
    "a picture",
    "an image",
    "a drawing",
    "simple shapes",
)


def filler_phrase(rng: random.Random) -> str:
    w, v = rng.sample(WORDS, 2)
    return rng.choice(TEMPLATES).format(w=w, v=v)


def with_filler(caption: str, seed: int, index: int, prob: float) -> str:
    """`caption` with a filler phrase in front (half of the time) or behind, with probability `prob`; the same
    (seed, index) always gives the same answer, in any process."""
    rng = random.Random(f"o1lora-filler:{seed}:{index}")
    if rng.random() >= prob:
        return caption
    phrase = filler_phrase(rng)
    return f"{phrase}, {caption}" if rng.random() < 0.5 else f"{caption}, {phrase}"
