"""The phrases the bundled model's pretraining puts around some captions: they say nothing about the scene."""

from collections import Counter

from core.synth import sample_scene
from core.synth.fillers import WORDS, with_filler
from core.synth.render import STYLES
from core.synth.scene import parse_caption
from core.synth.vocab import BACKGROUNDS, COLOURS, REGION_PHRASES, SHAPES, SIZES


def test_a_filler_keeps_what_the_caption_says_and_is_the_same_in_every_call():
    n, where = 400, Counter()
    for k in range(n):
        scene = sample_scene(128, k)
        plain = scene.caption()
        got = with_filler(plain, 128, k, prob=0.3)
        assert got == with_filler(plain, 128, k, prob=0.3)  # seeded by (seed, index), not by call order
        assert parse_caption(got) == scene.labels()
        if got != plain:
            where["start" if got.endswith(plain) else "end"] += 1
            assert plain in got
    # about the share asked for, on both sides of the scene
    assert 0.22 * n < sum(where.values()) < 0.38 * n
    assert min(where.values()) > 0.3 * sum(where.values())
    assert all(
        with_filler(sample_scene(1, k).caption(), 1, k, prob=0.0) == sample_scene(1, k).caption()
        for k in range(50)
    )


def test_fillers_never_use_a_word_of_the_scene_or_of_the_lora_styles_and_triggers():
    scene_words = set(" ".join([*COLOURS, *BACKGROUNDS, *SHAPES, *SIZES, *REGION_PHRASES.values()]).split())
    style_words = set(STYLES) | {"ink", "bold", "outline", "shading"}
    phrases = {with_filler("x", 5, k, prob=1.0) for k in range(2000)}
    used = {w.strip(",") for p in phrases for w in p.split()} - {"x"}
    assert set(WORDS) <= used  # every word is reachable
    assert not used & (scene_words - {"a", "in", "on", "the", "and", "at"})
    assert not used & style_words
