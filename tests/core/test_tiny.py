"""The tiny-checkpoint factory: tokenizer from a corpus, configurable sizes, official folder layout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core.layout import build_t2i, chat_text
from core.loading import load_model, load_tokenizer
from core.tiny import SPECIAL_TOKENS, TinySpec, build_model, build_tokenizer, mrope_section, write_tiny_checkpoint


def test_tokenizer_from_corpus_encodes_words_whole_and_any_text():
    tok = build_tokenizer(["a red circle above a blue square", "three green triangles"], vocab_size=400)
    vocab = tok.get_vocab()
    assert all(t in vocab for t in SPECIAL_TOKENS)
    ids = tok(" red circle", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Ġred", "Ġcircle"]
    weird = "Zebra 🦓 ünïcode"  # byte-level: never an unknown token, decodes back exactly
    assert tok.decode(tok(weird, add_special_tokens=False)["input_ids"]) == weird
    text = chat_text(tok, "a red circle")
    assert text == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == vocab["<|im_start|>"] and ids.count(vocab["<|im_end|>"]) == 1


def test_tokenizer_rejects_bad_corpus():
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer([1, 2, 3])


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="kv_heads"):
        TinySpec(heads=6, kv_heads=4).validate()
    with pytest.raises(ValueError, match="deepstack"):
        TinySpec(deepstack=(0, 5), vision_depth=2).validate()


def test_mrope_sections_follow_the_real_proportions():
    assert mrope_section(128) == [24, 20, 20]
    assert mrope_section(16) == [4, 2, 2]
    assert sum(mrope_section(64)) == 32


def test_small_pretraining_size_is_about_15m_parameters():
    spec = TinySpec(
        hidden=384,
        layers=8,
        heads=6,
        kv_heads=2,
        head_dim=64,
        mlp=1024,
        vision_hidden=64,
        vision_depth=2,
        vision_heads=2,
        vision_mlp=128,
    )
    with torch.device("meta"):  # sizes only; nothing allocated
        from core.model import HiDreamO1
        from core.tiny import tiny_config

        model = HiDreamO1(tiny_config(spec, build_tokenizer()))
    n = sum(p.numel() for p in model.parameters())
    assert 10e6 < n < 20e6, n


def test_written_checkpoint_has_official_layout_and_reloads(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "t", TinySpec(layers=3, head_dim=8, heads=2, kv_heads=1), seed=3)
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl" and cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert cfg["text_config"]["num_hidden_layers"] == 3 and cfg["text_config"]["head_dim"] == 8
    # the official (transformers 4.57) spelling, which 4.57 and 5.x both read
    assert cfg["text_config"]["rope_theta"] == 5e6 and "rope_parameters" not in cfg["text_config"]
    assert cfg["text_config"]["rope_scaling"] == {
        "rope_type": "default",
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    }
    tok = load_tokenizer(path)
    assert cfg["image_token_id"] == tok.get_vocab()["<|image_pad|>"]
    model = load_model(path)
    again, _ = build_model(TinySpec(layers=3, head_dim=8, heads=2, kv_heads=1), tok, seed=3)
    for k, v in model.state_dict().items():  # seeded: the same spec and seed give the same weights
        torch.testing.assert_close(v, again.state_dict()[k], atol=0, rtol=0)
    sample = build_t2i(tok, "a blue star", 32, 64)
    out = model(
        input_ids=sample.input_ids[None],
        position_ids=sample.position_ids[:, None],
        vinputs=torch.randn(1, 2, 3072),
        timestep=torch.tensor([0.5]),
        token_types=sample.token_types[None],
    )
    assert out.x_pred.shape == (1, sample.text_length + 2, 3072) and torch.isfinite(out.x_pred).all()


def test_cli_writes_a_checkpoint(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "core.tiny", str(tmp_path / "cli"), "--layers", "1", "--shards", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "parameters" in out.stdout
    assert (tmp_path / "cli" / "model.safetensors.index.json").is_file()
    load_model(tmp_path / "cli")
