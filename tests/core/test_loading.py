"""Loading: official folders (one file or shards), ComfyUI single files, bad checkpoints, tokenizer ids."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.layout import build_t2i, collate
from core.loading import CheckpointError, load_model, load_tokenizer
from core.tiny import TinySpec, build_model, build_tokenizer, save_checkpoint, save_comfy_file

SPEC = TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=48)


@pytest.fixture(scope="module")
def source():
    tok = build_tokenizer()
    model, _ = build_model(SPEC, tok, seed=7)
    return model, tok


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    model, tok = source
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "one", tok)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), atol=0, rtol=0, msg=k)


def test_single_file_folder_round_trip(source, folder):
    model, tok = source
    loaded = load_model(folder)
    same_weights(loaded, model)
    assert not loaded.training
    batch = collate([build_t2i(tok, "a red circle", 64, 64)])
    v = torch.randn(1, 4, 3072)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batch.model_inputs(v, 0.3)).x_pred, model(**batch.model_inputs(v, 0.3)).x_pred
        )


def test_sharded_folder_with_lm_head(source, tmp_path):
    model, tok = source
    path = save_checkpoint(model, tmp_path / "sharded", tok, shards=3, include_lm_head=True)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3 and "lm_head.weight" in index["weight_map"]
    same_weights(load_model(path), model)


def test_sharded_folder_missing_shard_is_named(source, tmp_path):
    model, tok = source
    path = save_checkpoint(model, tmp_path / "sharded", tok, shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_model(path)


def test_comfyui_single_file(source, folder, tmp_path):
    model, tok = source
    file = save_comfy_file(model, tmp_path / "comfy" / "hidream_o1.safetensors")
    assert all(k.startswith("diffusion_model.") for k in load_file(str(file)))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(file)  # no config beside it and none given
    same_weights(load_model(file, config=folder), model)  # config passed in
    shutil.copy(folder / "config.json", file.parent / "config.json")
    same_weights(load_model(file, dtype=torch.bfloat16), copy.deepcopy(model).to(torch.bfloat16))  # config beside


def test_unknown_key_is_named(folder, tmp_path):
    path = shutil.copytree(folder, tmp_path / "extra")
    state = load_file(str(path / "model.safetensors"))
    state["model.language_model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unknown keys.*layers\.0\.mlp\.extra_proj\.weight"):
        load_model(path)


def test_missing_key_is_named(folder, tmp_path):
    path = shutil.copytree(folder, tmp_path / "missing")
    state = load_file(str(path / "model.safetensors"))
    del state["model.final_layer2.linear.bias"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: model\.final_layer2\.linear\.bias"):
        load_model(path)


def test_shape_mismatch_is_named(folder, tmp_path):
    path = shutil.copytree(folder, tmp_path / "shape")
    state = load_file(str(path / "model.safetensors"))
    state["model.x_embedder.proj2.bias"] = torch.zeros(5)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.x_embedder\.proj2\.bias.*\(5,\)"):
        load_model(path)


def test_dtype_cast_on_the_way_and_rotary_float32(folder):
    m = load_model(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert not any(b.device.type == "meta" for b in m.buffers())


def test_token_ids_come_from_the_tokenizer(source, folder):
    model, tok = source
    loaded = load_model(folder)
    vocab = tok.get_vocab()
    assert loaded.tms_token_id == vocab["<|tms_token|>"] != 151673
    assert loaded.boi_token_id == vocab["<|boi_token|>"]
    t2 = load_tokenizer(folder)
    assert t2.get_vocab() == vocab
    assert (
        t2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_no_tokenizer_falls_back_to_official_tms(conformance, tmp_path):
    m = load_model(conformance / "tiny_checkpoint")
    assert (m.tms_token_id, m.boi_token_id) == (151673, None)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(conformance / "tiny_checkpoint")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        load_model(tmp_path)


def test_chat_template_from_the_processor_file(folder, tmp_path):
    path = shutil.copytree(folder, tmp_path / "proc")
    template = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").unlink()
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok = load_tokenizer(path)
    assert (
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


PROBE = r"""
import sys, threading, time, torch
from core.loading import load_model

def anon_mib():  # private memory of this process (file-backed mmap pages are not counted)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024

base, peak, done = anon_mib(), [0.0], []
def poll():
    while not done:
        peak[0] = max(peak[0], anon_mib())
        time.sleep(0.002)
t = threading.Thread(target=poll)
t.start()
m = load_model(sys.argv[1], dtype=torch.bfloat16)
done.append(1)
t.join()
size = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
print(f"{size:.1f} {peak[0] - base:.1f}")
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_loading_holds_one_copy_in_host_ram(tmp_path):
    """Peak private memory while loading a float32 checkpoint as bf16 stays near one bf16 model
    (materialising the float32 state dict first would need three times that)."""
    import subprocess
    import sys

    spec = TinySpec(hidden=512, layers=4, heads=8, kv_heads=2, head_dim=64, mlp=2048)
    model, tok = build_model(spec, seed=0)
    path = save_checkpoint(model, tmp_path / "big", tok, shards=2)
    del model
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    size, growth = map(float, out.stdout.split()[-2:])
    assert size > 30, size  # big enough to see
    print(f"bf16 model {size:.1f} MiB, peak private memory growth while loading {growth:.1f} MiB")
    assert growth < 1.5 * size, (size, growth)


def test_read_weights_gives_named_tensors_from_every_layout_cast_as_loading_casts(source, folder, tmp_path):
    """What an fp8 worker reads again to merge LoRAs from full precision (core.lora.merge): the same tensors as
    load_model places, from shards or a ComfyUI file; a name the checkpoint lacks fails before any read."""
    from core.loading import read_weights

    model, tok = source
    names = [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.layers.1.mlp.down_proj.weight",
    ]
    want = {n: model.state_dict()[n].to(torch.bfloat16) for n in names}
    sharded = save_checkpoint(model, tmp_path / "sharded", tok, shards=3)
    comfy = save_comfy_file(model, tmp_path / "comfy" / "o1.safetensors")
    for path in (folder, sharded, comfy):
        got = dict(read_weights(path, names, torch.bfloat16))
        assert got.keys() == set(names) and all(torch.equal(got[n], want[n]) for n in names), path
    with pytest.raises(CheckpointError, match="missing keys: model.nothing.weight"):
        next(read_weights(folder, [*names, "model.nothing.weight"], torch.float32))
