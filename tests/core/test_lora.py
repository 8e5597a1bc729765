"""LoRA: targets, export round-trips, foreign layouts, unplaceable keys, several LoRAs and hot-swapping.

Runs on the conformance tiny checkpoint with one of its official inputs; "the in-memory adapter" is the
PEFT-injected model the trainer holds, and every file read back must reproduce its output.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.loading import load_model
from core.lora import (
    LoraSpec,
    active_lora_modules,
    adapter_state_dict,
    apply_loras,
    bind_lora,
    build_metadata,
    clear_loras,
    comfyui_tensors,
    inject_lora,
    load_adapter_state_dict,
    load_lora,
    parse_lora_arg,
    read_lora,
    save_comfyui_file,
    save_peft_folder,
    set_adapter_enabled,
    set_loras,
    target_names,
)

ATOL = 2e-5


@pytest.fixture(scope="module")
def case(conformance):
    d = load_file(str(conformance / "cases" / "t2i_h64_w64_t0.05.safetensors"))
    keys = ("input_ids", "position_ids", "vinputs", "timestep", "token_types")
    return {k: d[k].clone() for k in keys}


@pytest.fixture(scope="module")
def ckpt(conformance):
    return conformance / "tiny_checkpoint"


def fresh(ckpt):
    return load_model(ckpt)


@torch.no_grad()
def run(model, case):
    return model(**case).x_pred


def trained_adapter(ckpt, spec: LoraSpec, seed: int = 0):
    """A PEFT model whose B matrices are non-zero, as after some training."""
    m = fresh(ckpt)
    inject_lora(m, spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lora_B." in n or ".lora_A." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def test_default_targets_are_the_recipe_linears_and_the_rest_is_frozen(ckpt):
    m = fresh(ckpt)
    names = target_names(m, LoraSpec())
    assert len(names) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down (252 at full size: test_full_size_count)
    assert all(n.startswith("model.language_model.layers.") for n in names)
    extra = target_names(m, LoraSpec(extra_targets=("x_embedder", "final_layer2")))
    assert set(extra) - set(names) == {
        "model.x_embedder.proj1",
        "model.x_embedder.proj2",
        "model.final_layer2.linear",
    }
    inject_lora(m, LoraSpec(rank=4))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(trainable) == 28 and all(".lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if ".lora_" in n)


def test_full_size_count_is_252():
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

    from core.model import HiDreamO1

    cfg = Qwen3VLConfig()
    tc = cfg.text_config
    tc.hidden_size, tc.num_hidden_layers, tc.intermediate_size = 4096, 36, 12288
    tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim = 32, 8, 128
    with torch.device("meta"):
        m = HiDreamO1(cfg)
    names = target_names(m, LoraSpec())
    assert len(names) == 252
    params = sum(16 * (m.get_submodule(n).in_features + m.get_submodule(n).out_features) for n in names)
    assert 40e6 < params < 50e6  # the recipe's "~44M parameters at rank 16"


def test_bad_spec_is_named():
    with pytest.raises(ValueError, match="unknown extra LoRA targets"):
        LoraSpec(extra_targets=("vision",))
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)


@pytest.mark.parametrize("fmt", ["peft", "comfyui"])
def test_export_round_trips(ckpt, case, tmp_path, fmt):
    spec = LoraSpec(rank=4, alpha=8.0, extra_targets=("final_layer2",))
    trained = trained_adapter(ckpt, spec)
    want = run(trained, case)
    set_adapter_enabled(trained, False)
    base_out = run(trained, case)
    set_adapter_enabled(trained, True)
    assert (want - base_out).abs().max() > 1e-2  # the adapter does something measurable

    adapter = adapter_state_dict(trained)
    meta = build_metadata(
        trigger="sks style",
        spec=spec,
        steps=12,
        resolution=64,
        base_model="tiny",
        base_config=trained.config,
        training={"lr": 1e-4},
    )
    path = (
        save_peft_folder(adapter, spec, tmp_path / "lora", meta)
        if fmt == "peft"
        else save_comfyui_file(adapter, spec, tmp_path / "lora.safetensors", meta)
    )
    lora = read_lora(path)
    assert lora.layout == fmt and lora.metadata["o1lora.trigger"] == "sks style"
    assert lora.metadata["o1lora.rank"] == "4" and len(lora.metadata["o1lora.base_config_sha256"]) == 64

    base = fresh(ckpt)
    bound = bind_lora(base, lora, strict=True)
    assert len(bound.deltas) == 15 and bound.unplaced == []
    with apply_loras(base, [(bound, 1.0)]):
        got = run(base, case)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(run(base, case), base_out, atol=0, rtol=0)  # the base is back, bit for bit


def test_peft_folder_loads_in_peft_itself(ckpt, case, tmp_path):
    """Our PEFT folder is a real one: peft's own loader gives the same output."""
    from peft import PeftModel

    spec = LoraSpec(rank=4, alpha=4.0)
    trained = trained_adapter(ckpt, spec, seed=1)
    save_peft_folder(adapter_state_dict(trained), spec, tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"
    loaded = PeftModel.from_pretrained(fresh(ckpt), str(tmp_path / "p"))
    torch.testing.assert_close(run(loaded, case), run(trained, case), atol=ATOL, rtol=1e-4)


def _foreign(adapter: dict, spec: LoraSpec, layout: str) -> dict:
    """The same adapter as other tools write it (alpha != rank where the layout carries alpha)."""
    out = {}
    for k, v in adapter.items():
        path, role = k.rsplit(".lora_", 1)  # "model.language_model....q_proj", "A.weight"
        half = role[0]  # "A" or "B"
        short = path[len("model.") :]
        if layout == "comfy_down_up":
            out[f"diffusion_model.{short}.lora_{'down' if half == 'A' else 'up'}.weight"] = v
            out[f"diffusion_model.{short}.alpha"] = torch.tensor(spec.alpha)
        elif layout == "musubi":
            stem = "lora_unet_" + short.replace(".", "_")
            out[f"{stem}.lora_{'down' if half == 'A' else 'up'}.weight"] = v.to(torch.bfloat16).float()
            out[f"{stem}.alpha"] = torch.tensor(spec.alpha)
        elif layout == "diffsynth":
            out[f"{path}.lora_{half}.default.weight"] = v
        elif layout == "bare":
            out[f"{short}.lora_{half}.weight"] = v
    return out


@pytest.mark.parametrize(
    "layout,expect",
    [("comfy_down_up", "comfyui"), ("musubi", "musubi"), ("diffsynth", "diffsynth"), ("bare", "bare")],
)
def test_foreign_layouts_give_the_same_outputs(ckpt, case, tmp_path, layout, expect):
    # diffsynth and bare files carry no alpha, so the adapter they come from has alpha == rank
    spec = LoraSpec(
        rank=4, alpha=2.0 if layout in ("comfy_down_up", "musubi") else 4.0, extra_targets=("final_layer2",)
    )
    trained = trained_adapter(ckpt, spec, seed=2)
    if layout == "musubi":  # the file is stored in bf16 below; compare against the same values
        with torch.no_grad():
            for n, p in trained.named_parameters():
                if ".lora_" in n:
                    p.copy_(p.to(torch.bfloat16).float())
    want = run(trained, case)
    path = tmp_path / f"{layout}.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _foreign(adapter_state_dict(trained), spec, layout).items()}, str(path)
    )
    base = fresh(ckpt)
    lora = read_lora(path)
    assert lora.layout == expect
    bound = bind_lora(base, lora, strict=True)
    assert len(bound.deltas) == 15
    with apply_loras(base, [(bound, 1.0)]):
        torch.testing.assert_close(run(base, case), want, atol=ATOL, rtol=1e-4)


def test_unplaceable_keys_are_reported(ckpt, tmp_path):
    spec = LoraSpec(rank=4)
    tensors = comfyui_tensors(adapter_state_dict(trained_adapter(ckpt, spec)), spec)
    tensors["diffusion_model.language_model.layers.7.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 32)
    tensors["diffusion_model.language_model.layers.7.mlp.up_proj.lora_B.weight"] = torch.zeros(64, 4)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
    tensors["diffusion_model.language_model.layers.0.mlp.up_proj.dora_scale"] = torch.ones(1, 64)
    tensors["diffusion_model.language_model.layers.1.mlp.down_proj.lora_A.weight"] = torch.zeros(4, 33)
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    base = fresh(ckpt)
    bound = bind_lora(base, path)
    text = "\n".join(bound.unplaced)
    assert len(bound.unplaced) == 4, text
    assert "layers.7.mlp.up_proj: no such linear" in text
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1: a text-encoder module" in text
    assert "dora_scale: a DoRA magnitude" in text
    assert "layers.1.mlp.down_proj: shapes" in text
    assert len(bound.deltas) == 13
    with pytest.raises(ValueError, match="4 LoRA keys cannot be placed"):
        bind_lora(base, path, strict=True)


def test_files_that_are_not_loras_are_refused(tmp_path, ckpt):
    save_file({"model.norm.weight": torch.ones(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="no LoRA tensors"):
        read_lora(tmp_path / "x.safetensors")
    (tmp_path / "y.ckpt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="only .safetensors"):
        read_lora(tmp_path / "y.ckpt")
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "missing.safetensors")


def test_several_loras_with_scales_and_swapping(ckpt, case, tmp_path):
    spec = LoraSpec(rank=4)
    a_model, b_model = trained_adapter(ckpt, spec, seed=3), trained_adapter(ckpt, spec, seed=4)
    save_comfyui_file(adapter_state_dict(a_model), spec, tmp_path / "a.safetensors")
    save_comfyui_file(adapter_state_dict(b_model), spec, tmp_path / "b.safetensors")
    base = fresh(ckpt)
    plain = run(base, case)
    weights_before = {k: v.clone() for k, v in base.state_dict().items()}
    a, b = load_lora(base, tmp_path / "a.safetensors"), load_lora(base, tmp_path / "b.safetensors")

    # Reference: the deltas merged into a copy of the weights by hand.
    merged = fresh(ckpt)
    with torch.no_grad():
        for lora, scale in ((a, 1.0), (b, -0.5)):
            for path, (down, up) in lora.deltas.items():
                merged.get_submodule(path).weight += scale * up @ down
    with apply_loras(base, [(a, 1.0), (b, -0.5)]):
        assert active_lora_modules(base) == 14
        torch.testing.assert_close(run(base, case), run(merged, case), atol=ATOL, rtol=1e-4)

    set_loras(base, [(a, 1.0)])
    only_a = run(base, case)
    set_loras(base, [(b, 1.0)])  # swap without clearing first
    only_b = run(base, case)
    set_loras(base, [(a, 1.0)])
    torch.testing.assert_close(run(base, case), only_a, atol=0, rtol=0)
    assert (only_a - only_b).abs().max() > 1e-2
    set_loras(base, [(a, 0.0)])  # scale 0 == off
    torch.testing.assert_close(run(base, case), plain, atol=0, rtol=0)
    clear_loras(base)
    assert active_lora_modules(base) == 0
    torch.testing.assert_close(run(base, case), plain, atol=0, rtol=0)
    for k, v in base.state_dict().items():
        assert torch.equal(v, weights_before[k]), k
    with pytest.raises(TypeError, match="BoundLora"):
        set_loras(base, [("a.safetensors", 1.0)])


def test_adapter_state_dict_round_trips_in_place(ckpt):
    spec = LoraSpec(rank=4)
    src, dst = trained_adapter(ckpt, spec, seed=5), trained_adapter(ckpt, spec, seed=6)
    load_adapter_state_dict(dst, adapter_state_dict(src))
    for k, v in adapter_state_dict(src).items():
        assert torch.equal(adapter_state_dict(dst)[k], v)
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state_dict(dst, {})


def test_parse_lora_arg():
    assert parse_lora_arg("style.safetensors:0.7") == ("style.safetensors", 0.7)
    assert parse_lora_arg("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_arg("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)
    assert parse_lora_arg("dir/x:-0.5") == ("dir/x", -0.5)


def test_a_folder_written_by_peft_itself_with_rslora_and_patterns(ckpt, case, tmp_path):
    """A real PEFT save (not ours): rsLoRA scaling and per-module rank/alpha patterns are honoured."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        use_rslora=True,
        rank_pattern={"v_proj": 2},
        alpha_pattern={"q_proj": 3},
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(fresh(ckpt), cfg)
    want = run(peft_model, case)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    base = fresh(ckpt)
    bound = bind_lora(base, read_lora(tmp_path / "peft"), strict=True)
    assert len(bound.deltas) == 8
    assert bound.deltas["model.language_model.layers.0.self_attn.v_proj"][0].shape[0] == 2
    with apply_loras(base, [(bound, 1.0)]):
        torch.testing.assert_close(run(base, case), want, atol=ATOL, rtol=1e-4)
