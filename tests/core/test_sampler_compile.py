"""The compiled sampler step: one graph per image size whatever the prompt length or batch, eager output,
an eager fallback when compilation fails; and Sampler.sample (per-image prompts, negatives, seeds)."""

from __future__ import annotations

import pytest
import torch

from core.sampler import ImageSpec, Sampler
from core.tiny import build_model

ARGS = dict(steps=2, guidance=2.0, return_latents=True)


class CountingBackend:
    def __init__(self, fail: bool = False):
        self.compiles, self.fail = 0, fail

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        if self.fail:
            raise RuntimeError("backend exploded")
        return gm.forward


@pytest.fixture(scope="module")
def model():
    return build_model(seed=0)


def test_one_graph_per_size_whatever_the_prompt_length_or_batch(model):
    m, tok = model
    backend = CountingBackend()
    fast, eager = Sampler(m, tok, preview_every=0, compile=backend), Sampler(m, tok, preview_every=0)
    graphs = []
    for prompt, n, (w, h) in [
        ("a red circle", 1, (64, 32)),
        ("two small blue squares on the left of a large green triangle", 1, (64, 32)),
        ("a red circle", 3, (64, 32)),
        ("blue", 2, (64, 32)),
        ("a red circle", 1, (64, 64)),
        ("a much longer prompt about a red circle", 2, (64, 64)),
    ]:
        z = fast([prompt], width=w, height=h, num_images=n, **ARGS)
        graphs.append(backend.compiles)
        assert torch.equal(z, eager([prompt], width=w, height=h, num_images=n, **ARGS))
    # per image size at most three graphs, whatever the prompt length: one image (CFG's two runs of one row,
    # each over its own unpadded prompt), several images (runs of n rows), and a masked batch ("blue" is as
    # long as the " " negative: one run, padded keys masked as for joined requests of several prompts)
    assert graphs == [1, 1, 2, 3, 4, 5]


def test_compiled_layers_one_graph_for_every_layer_prompt_length_and_batch(model):
    """compile_scope="layers": the 2 decoder layers share one compiled function, and its graphs are compiled
    once per image size and kind of batch whatever the prompt length (dynamic marks), with eager's output; the
    prefix pass stays eager (it records K/V per layer)."""
    m, tok = model
    torch._dynamo.reset()
    backend = CountingBackend()
    fast, eager = (
        Sampler(m, tok, preview_every=0, compile=backend, compile_scope="layers"),
        Sampler(m, tok, preview_every=0),
    )
    try:
        assert m.layers_compiled and len(m.model.language_model.layers) == 2
        graphs = []
        for prompt, n, (w, h) in [
            ("a red circle", 1, (64, 32)),
            ("two small blue squares on the left of a large green triangle", 1, (64, 32)),
            ("a red circle", 3, (64, 32)),
            ("blue", 2, (64, 32)),
            ("a red circle", 1, (64, 64)),
        ]:
            z = fast([prompt], width=w, height=h, num_images=n, **ARGS)
            graphs.append(backend.compiles)
            m.eager_layers()
            want = eager([prompt], width=w, height=h, num_images=n, **ARGS)
            m.compile_layers(backend)
            assert torch.equal(z, want)
        assert graphs == [1, 1, 2, 3, 4]  # the three kinds of batch of the test above, then a new size
    finally:
        m.eager_layers()


def test_a_failing_layer_compiler_falls_back_to_eager_layers(model):
    m, tok = model
    torch._dynamo.reset()
    fast = Sampler(m, tok, preview_every=0, compile=CountingBackend(fail=True), compile_scope="layers")
    z = fast(["a red circle"], width=64, height=32, **ARGS)
    assert not fast.compiled and not m.layers_compiled and "backend exploded" in fast.compile_failed
    assert torch.equal(z, Sampler(m, tok, preview_every=0)(["a red circle"], width=64, height=32, **ARGS))
    with pytest.raises(ValueError, match="compile_scope"):
        Sampler(m, tok, compile=True, compile_scope="everything")


def test_a_failing_compiler_falls_back_to_eager_for_good(model):
    m, tok = model
    backend = CountingBackend(fail=True)
    fast = Sampler(m, tok, preview_every=0, compile=backend)
    z = fast(["a red circle"], width=64, height=32, **ARGS)
    want = Sampler(m, tok, preview_every=0)(["a red circle"], width=64, height=32, **ARGS)
    assert torch.equal(z, want) and not fast.compiled and "backend exploded" in fast.compile_failed
    fast(["a red circle"], width=64, height=32, **ARGS)
    assert backend.compiles == 1  # not tried again on every step


def test_sample_gives_each_image_what_a_request_of_its_own_gives(model):
    m, tok = model
    s = Sampler(m, tok, preview_every=0)
    specs = [
        ImageSpec("a red circle", " ", 4),
        ImageSpec("two small blue squares", "blurry, dark", 9),
        ImageSpec("a red circle", " ", 5),
    ]
    together = s.sample(specs, width=64, height=32, **ARGS)
    alone = torch.cat(
        [
            s([im.prompt], negative_prompt=im.negative_prompt, seed=im.seed, width=64, height=32, **ARGS)
            for im in specs
        ]
    )
    assert (together - alone).abs().max().item() < 1e-4
    assert not torch.equal(together[0], together[2])  # same prompt, two seeds
    with pytest.raises(ValueError, match="non-empty list of ImageSpec"):
        s.sample([], width=64, height=32)
