"""core.fullsize: checkpoints written tensor by tensor load through the real loader, in both layouts."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from safetensors import safe_open

from core.fullsize import (
    FULL_SPEC,
    FULL_VOCAB,
    full_config,
    tensor_plan,
    write_comfy_file,
    write_full_checkpoint,
    write_safetensors,
)
from core.tiny import TinySpec, build_tokenizer


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullsize")
    r = write_full_checkpoint(
        root / "hf", spec=TinySpec(), vocab=None, shard_gb=0.0002, device="cpu", log=lambda s: None
    )
    c = write_comfy_file(root / "hf", root / "comfy" / "model.safetensors")
    return r, c


def test_both_layouts_load_the_same_weights_with_the_tokenizer_and_chat_template(written):
    from core.loading import load_model, load_tokenizer

    r, c = written
    assert r["shards"] > 1
    index = json.loads((r["path"] / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == r["bytes"] == c["bytes"]
    hf, comfy = load_model(r["path"]), load_model(c["path"])
    a, b = hf.state_dict(), comfy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hf.tms_token_id == comfy.tms_token_id is not None and hf.boi_token_id is not None
    tok = load_tokenizer(c["path"])
    text = tok.apply_chat_template(
        [{"role": "user", "content": "a harbour at dusk"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>user\na harbour at dusk<|im_end|>")
    # seeded per name: the same folder written again is byte-identical
    w = next(iter(a))
    assert torch.equal(a[w], load_model(r["path"]).state_dict()[w])


def test_the_writer_holds_one_tensor_at_a_time(tmp_path):
    entries = [(f"t{i}", (64, 32), torch.bfloat16) for i in range(6)]
    alive: list[weakref.ref] = []
    most = [0]

    def make(name):
        gc.collect()
        most[0] = max(most[0], sum(r() is not None for r in alive))
        t = torch.full((64, 32), float(name[1:]), dtype=torch.bfloat16)
        alive.append(weakref.ref(t))
        return t

    write_safetensors(tmp_path / "x.safetensors", entries, make)
    assert most[0] == 0  # every earlier tensor was gone before the next was made
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert [float(f.get_tensor(n)[0, 0]) for n, _, _ in entries] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_made_tensor_that_disagrees_with_the_header_is_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(ValueError, match="header says"):
        write_safetensors(tmp_path / "x.safetensors", [("a", (2, 2), torch.float32)], lambda n: torch.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_the_full_size_plan_is_the_8b_model():
    cfg = full_config(build_tokenizer(), FULL_SPEC, FULL_VOCAB)
    plan = tensor_plan(cfg)
    n = sum(torch.Size(s).numel() for _, s, _ in plan)
    assert 8.1e9 < n < 8.3e9, n  # 16.37 GB in bf16, as written on the GPU machine
    assert ("model.language_model.embed_tokens.weight", (151936, 4096), torch.float32) in plan
