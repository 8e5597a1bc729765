"""LoRA files for other tools, and entries that are not applied: never dropped silently.

- save_lora_file writes ComfyUI, musubi-tuner and DiffSynth-Studio files with each tool's key names and
  alpha convention, bf16 unless asked for fp32, readable by other users (0644); each loads back through our
  loader with the in-memory adapter's outputs.
- ComfyUI `LoraSave` extras (.diff / .diff_b full differences, an embed_tokens LoRA) and NaN weights are
  listed in BoundLora.unplaced with a reason; `python -m core.generate --lora` prints them to stderr.
"""

from __future__ import annotations

import re
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.generate import main, unplaced_warning
from core.loading import load_model
from core.lora import (
    LoraSpec,
    adapter_state_dict,
    apply_loras,
    bind_lora,
    inject_lora,
    read_lora,
    save_comfyui_file,
    save_lora_file,
    save_peft_folder,
)
from core.tiny import write_tiny_checkpoint

# What each tool's loader looks for (musubi-tuner: kohya names from its Qwen3VLForConditionalGeneration root;
# DiffSynth-Studio: PEFT names under its HiDreamO1ImageModel with the "default" adapter, no alpha).
PATTERNS = {
    "comfyui": re.compile(
        r"diffusion_model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\."
        r"(lora_A\.weight|lora_B\.weight|alpha)"
    ),
    "musubi": re.compile(
        r"lora_unet_model_language_model_layers_\d+_(self_attn|mlp)_\w+_proj\."
        r"(lora_down\.weight|lora_up\.weight|alpha)"
    ),
    "diffsynth": re.compile(
        r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\."
        r"lora_[AB]\.default\.weight"
    ),
}


@pytest.fixture(scope="module")
def ckpt(conformance):
    return conformance / "tiny_checkpoint"


@pytest.fixture(scope="module")
def case(conformance):
    d = load_file(str(conformance / "cases" / "t2i_h64_w64_t0.05.safetensors"))
    return {k: d[k].clone() for k in ("input_ids", "position_ids", "vinputs", "timestep", "token_types")}


@pytest.fixture(scope="module")
def trained(ckpt):
    """An adapter with rank 4, alpha 2 (scale 0.5, so a lost or doubled alpha shows) and non-zero B."""
    spec = LoraSpec(rank=4, alpha=2.0)
    m = load_model(ckpt)
    inject_lora(m, spec)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m, spec


@torch.no_grad()
def run(model, case):
    return model(**case).x_pred


@pytest.mark.parametrize("fmt", ["comfyui", "musubi", "diffsynth"])
def test_each_tools_file_loads_back_with_the_adapters_outputs(ckpt, case, trained, tmp_path, fmt):
    model, spec = trained
    want = run(model, case)
    adapter = adapter_state_dict(model)
    base = load_model(ckpt)
    effect = (want - run(base, case)).abs().max().item()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        path = save_lora_file(adapter, spec, tmp_path / f"{fmt}-{dtype}.safetensors", fmt, dtype=dtype)
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            assert all(PATTERNS[fmt].fullmatch(k) for k in keys), [
                k for k in keys if not PATTERNS[fmt].fullmatch(k)
            ]
            weights = [f.get_tensor(k) for k in keys if not k.endswith(".alpha")]
        assert len(weights) == 2 * 14 and {w.dtype for w in weights} == {dtype}
        assert (fmt == "diffsynth") == (not any(k.endswith(".alpha") for k in keys))  # alpha folded there
        bound = bind_lora(base, read_lora(path), strict=True)
        assert len(bound.deltas) == 14
        with apply_loras(base, [(bound, 1.0)]):
            torch.testing.assert_close(run(base, case), want, atol=tol * effect, rtol=0)


def test_default_dtype_is_bf16_and_files_are_readable_by_others(trained, tmp_path):
    model, spec = trained
    adapter = adapter_state_dict(model)
    path = save_lora_file(adapter, spec, tmp_path / "a.safetensors", "musubi")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor(next(k for k in f.keys() if k.endswith("lora_up.weight"))).dtype == torch.bfloat16
    peft = save_peft_folder(adapter, spec, tmp_path / "peft")
    comfy = save_comfyui_file(adapter, spec, tmp_path / "c.safetensors")
    for p in (path, comfy, peft / "adapter_model.safetensors", peft / "adapter_config.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    with pytest.raises(ValueError, match="folder"):
        save_lora_file(adapter, spec, tmp_path / "p.safetensors", "peft")


def lora_save_file(path, model) -> None:
    """What ComfyUI's LoraSave writes for HiDream-O1: LoRA pairs, plus full differences for norms and biases
    (.diff / .diff_b) and a LoRA on the token embedding."""
    g = torch.Generator().manual_seed(0)
    t = {}
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        lin = model.get_submodule(f"model.language_model.layers.0.{name}")
        stem = f"diffusion_model.language_model.layers.0.{name}"
        t[stem + ".lora_down.weight"] = torch.randn(4, lin.in_features, generator=g)
        t[stem + ".lora_up.weight"] = torch.randn(lin.out_features, 4, generator=g)
    emb = model.get_submodule("model.language_model.embed_tokens")
    t["diffusion_model.language_model.embed_tokens.lora_down.weight"] = torch.randn(4, emb.embedding_dim)
    t["diffusion_model.language_model.embed_tokens.lora_up.weight"] = torch.randn(emb.num_embeddings, 4)
    t["diffusion_model.language_model.norm.diff"] = torch.randn(emb.embedding_dim)
    final = model.get_submodule("model.final_layer2.linear")
    t["diffusion_model.final_layer2.linear.diff_b"] = torch.randn(final.out_features)
    save_file(t, str(path))


def test_lora_save_extras_and_nan_weights_are_listed_with_a_reason(ckpt, tmp_path):
    model = load_model(ckpt)
    lora_save_file(tmp_path / "saved.safetensors", model)
    bound = bind_lora(model, read_lora(tmp_path / "saved.safetensors"))
    assert sorted(bound.deltas) == [
        "model.language_model.layers.0.mlp.down_proj",
        "model.language_model.layers.0.self_attn.q_proj",
    ]
    text = "\n".join(bound.unplaced)
    assert len(bound.unplaced) == 3, text
    assert "language_model.norm.diff: a full weight difference" in text
    assert "final_layer2.linear.diff_b: a full weight difference" in text
    assert "embed_tokens: not a linear module" in text

    t = load_file(str(tmp_path / "saved.safetensors"))
    t["diffusion_model.language_model.layers.0.mlp.down_proj.lora_up.weight"][0, 0] = float("nan")
    save_file(t, str(tmp_path / "nan.safetensors"))
    bound = bind_lora(model, read_lora(tmp_path / "nan.safetensors"))
    assert "layers.0.mlp.down_proj: has NaN or infinite weights" in "\n".join(bound.unplaced)
    assert list(bound.deltas) == ["model.language_model.layers.0.self_attn.q_proj"]


def test_generate_cli_prints_unplaced_entries_to_stderr(tmp_path_factory, tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
    lora_save_file(tmp_path / "saved.safetensors", load_model(ckpt))
    main(
        [
            "--model",
            str(ckpt),
            "--prompt",
            "p",
            "--out",
            str(tmp_path / "o.png"),
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "1",
            "--lora",
            f"{tmp_path / 'saved.safetensors'}:0.5",
        ]
    )
    err = capsys.readouterr().err
    assert "warning: LoRA" in err and "3 entries not applied" in err, err
    assert "norm.diff: a full weight difference" in err and "embed_tokens: not a linear module" in err
    assert unplaced_warning("f", [f"k{i}: r" for i in range(7)]).endswith("... and 2 more")


def test_comfyui_copies_written_before_the_shared_grammar_still_place(ckpt, tmp_path):
    """Imports of `transformer.*` files were stored as `diffusion_model.transformer.*` (0 modules placed, and
    the worker loads that copy first): the loader now reads those stored copies too."""
    model = load_model(ckpt)
    lin = model.get_submodule("model.language_model.layers.0.self_attn.q_proj")
    stem = "diffusion_model.transformer.language_model.layers.0.self_attn.q_proj"
    save_file(
        {
            stem + ".lora_A.weight": torch.ones(2, lin.in_features),
            stem + ".lora_B.weight": torch.ones(lin.out_features, 2),
        },
        str(tmp_path / "old.safetensors"),
    )
    bound = bind_lora(model, read_lora(tmp_path / "old.safetensors"), strict=True)
    assert list(bound.deltas) == ["model.language_model.layers.0.self_attn.q_proj"]
