"""The vision tower waits in host memory until a reference image needs it (core.model.HiDreamO1.park_vision): the
generation worker parks it after loading, a text-to-image training keeps it parked for the run. On the CPU there is
nothing to park; on CUDA (marked gpu) parking frees its bytes, text-to-image leaves it parked, and the first request
with a reference brings it back and draws what an unparked model draws."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.loading import load_model, load_tokenizer
from core.sampler import Sampler
from core.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("park") / "model")


def reference() -> Image.Image:
    img = Image.new("RGB", (64, 64), (200, 60, 60))
    img.paste((40, 40, 200), (16, 16, 48, 48))
    return img


def test_on_the_cpu_nothing_is_parked_and_references_work(tiny):
    model = load_model(tiny)
    assert model.park_vision() is False and not model.vision_parked
    sampler = Sampler(model, load_tokenizer(tiny))
    out = sampler(
        ["keep the picture"], width=64, height=64, steps=2, references=[reference()], return_latents=True
    )
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_parked_tower_frees_its_bytes_and_comes_back_for_the_first_reference(tiny):
    model = load_model(tiny, torch.bfloat16, "cuda")
    sampler = Sampler(model, load_tokenizer(tiny))
    kw = dict(width=64, height=64, steps=2, return_latents=True)
    want = sampler(["keep the picture"], references=[reference()], **kw)
    tower = sum(p.numel() * p.element_size() for p in model.model.visual.parameters())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    assert model.park_vision() and model.vision_parked
    assert before - torch.cuda.memory_allocated() >= tower
    sampler(["a red picture"], **kw)
    assert model.vision_parked  # text-to-image leaves it on the host
    got = sampler(["keep the picture"], references=[reference()], **kw)
    assert not model.vision_parked
    assert {p.device.type for p in model.model.visual.parameters()} == {"cuda"}
    assert torch.equal(got, want)
