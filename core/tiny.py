"""Small random HiDream-O1 checkpoints in the official folder layout, with a small HF tokenizer.

    python -m core.tiny /tmp/tiny                       # the default test-size model (~0.5M parameters)
    python -m core.tiny /tmp/small --hidden 384 --layers 8 --heads 6 --kv-heads 2 --head-dim 64 --mlp 1024

The folder holds config.json (Qwen3VLConfig), model.safetensors (or shards + model.safetensors.index.json),
generation_config.json, and a byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json with a
Qwen-style chat template and the special tokens the layout needs), so tests exercise the real loading path.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from core.model import HiDreamO1

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|boi_token|>",
    "<|tms_token|>",
]
# One user message, as the Qwen chat template renders it (string or [{"type": "image"|"text"}] content).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
DEFAULT_WORDS = (
    "a an the one two three red green blue yellow white black orange purple small large big tiny "
    "circle square triangle star on of in with and left right top bottom center background "
    "scene shape shapes image picture photo style user assistant"
).split()


@dataclass
class TinySpec:
    """Sizes of a small HiDream-O1 (the real model: 4096 / 36 / 32 / 8 / 128 / 12288, vision 1152 x 27)."""

    hidden: int = 32  # text hidden size (x_embedder bottleneck is hidden / 4)
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16  # need not be hidden / heads
    mlp: int = 64
    vision_hidden: int = 32
    vision_depth: int = 2
    vision_heads: int = 2  # vision head dim must be divisible by 4 (2-D rotary)
    vision_mlp: int = 64
    deepstack: tuple[int, ...] = (0,)  # vision blocks whose features are added after the first text layers
    vision_grid: int = 8  # learned vision position grid side (num_position_embeddings = grid^2)
    rope_theta: float = 5_000_000.0
    vocab_multiple: int = 64  # vocab_size = len(tokenizer) rounded up to this
    extra: dict = field(default_factory=dict)  # passed into text_config as is

    def validate(self) -> None:
        problems = []
        if self.hidden % 4:
            problems.append(f"hidden {self.hidden} must be divisible by 4 (x_embedder bottleneck)")
        if self.heads % self.kv_heads:
            problems.append(f"heads {self.heads} must be a multiple of kv_heads {self.kv_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            problems.append(f"head_dim {self.head_dim} must be even and >= 6 (three M-RoPE sections)")
        if self.vision_hidden % self.vision_heads or (self.vision_hidden // self.vision_heads) % 4:
            problems.append(
                f"vision_hidden/vision_heads = {self.vision_hidden}/{self.vision_heads} must be an "
                f"integer divisible by 4"
            )
        if any(i >= self.vision_depth for i in self.deepstack):
            problems.append(f"deepstack indexes {self.deepstack} must be < vision_depth {self.vision_depth}")
        if len(self.deepstack) > self.layers:
            problems.append(f"{len(self.deepstack)} deepstack features need at least as many text layers")
        if problems:
            raise ValueError("bad TinySpec: " + "; ".join(problems))


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary slots into (t, h, w) in the real model's 24:20:20 proportion."""
    half = head_dim // 2
    hw = max(1, round(half * 20 / 64))
    return [half - 2 * hw, hw, hw]


# ----------------------------------------------------------------------------- tokenizer
def build_tokenizer(corpus=None, vocab_size: int = 512):
    """A byte-level BPE tokenizer (as Qwen's) trained on `corpus` (an iterable of words or sentences),
    with the special tokens and chat template the layout needs. Any text encodes (no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else list(DEFAULT_WORDS)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("corpus must be a non-empty iterable of strings")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # words also appear with a leading space, as they do inside sentences
    tok.train_from_iterator(texts + [" " + t for t in texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ----------------------------------------------------------------------------- config and weights
def tiny_config(spec: TinySpec, tokenizer) -> Qwen3VLConfig:
    spec.validate()
    vocab = tokenizer.get_vocab()
    vocab_size = int(math.ceil(len(tokenizer) / spec.vocab_multiple) * spec.vocab_multiple)
    text = dict(
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.mlp,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        vocab_size=vocab_size,
        max_position_embeddings=262144,
        attention_bias=False,
        rope_theta=spec.rope_theta,
        rope_scaling={
            "rope_type": "default",
            "mrope_section": mrope_section(spec.head_dim),
            "mrope_interleaved": True,
        },
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        **spec.extra,
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        num_heads=spec.vision_heads,
        intermediate_size=spec.vision_mlp,
        hidden_act="gelu_pytorch_tanh",
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        out_hidden_size=spec.hidden,
        num_position_embeddings=spec.vision_grid**2,
        deepstack_visual_indexes=list(spec.deepstack),
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=False,
    )


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> None:
    """Seeded random weights with unit-scale activations: Linear/Conv N(0, 1/fan_in), small biases,
    norms near 1, embeddings N(0, 1). (Random on purpose: a zero final layer would hide bugs in tests.)"""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("embed_tokens.weight"):
            std, mean = 1.0, 0.0
        elif name.endswith("pos_embed.weight"):
            std, mean = 0.5, 0.0
        elif "norm" in name and p.ndim == 1:
            std, mean = (0.1, 1.0) if name.endswith("weight") else (0.05, 0.0)
        elif p.ndim == 1:
            std, mean = 0.05, 0.0
        else:
            std, mean = (1.0 / (p[0].numel())) ** 0.5, 0.0
        p.copy_(torch.randn(p.shape, generator=g) * std + mean)


def build_model(spec: TinySpec | None = None, tokenizer=None, seed: int = 0) -> tuple[HiDreamO1, object]:
    """(random HiDreamO1 in float32 on the CPU, its tokenizer); token ids are set from the tokenizer."""
    from core.loading import set_token_ids

    spec = spec or TinySpec()
    tokenizer = tokenizer or build_tokenizer()
    model = HiDreamO1(tiny_config(spec, tokenizer))
    init_weights(model, seed)
    set_token_ids(model, tokenizer)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- writing
def save_checkpoint(
    model: HiDreamO1, path, tokenizer=None, shards: int = 1, dtype=None, include_lm_head: bool = False
) -> Path:
    """Write `model` as an official HF folder (the same key names as the real checkpoint)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    if include_lm_head:
        cfg = model.config.text_config
        state["lm_head.weight"] = torch.zeros(
            cfg.vocab_size, cfg.hidden_size, dtype=next(iter(state.values())).dtype
        )
    keys = sorted(state)
    if shards <= 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = math.ceil(len(keys) / shards)
        weight_map, total = {}, 0
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
            save_file(part, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
            total += sum(t.numel() * t.element_size() for t in part.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    config = official_config_dict(model.config)
    config["dtype"] = str(dtype or next(iter(state.values())).dtype).replace("torch.", "")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    text = model.config.text_config
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id}, indent=2)
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
        _portable_tokenizer_config(path / "tokenizer_config.json")
    return path


def _portable_tokenizer_config(file: Path) -> None:
    """transformers 5 names the class `TokenizersBackend`, which 4.x cannot import; both load the
    generic fast class; 4.x reads the special-token list from `additional_special_tokens` (5.x reads both)."""
    cfg = json.loads(file.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(cfg.get("extra_special_tokens"), list):  # 4.x expects a dict there
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    for key in ("is_local", "local_files_only"):  # how a loaded tokenizer was found, not what it is
        cfg.pop(key, None)
    file.write_text(json.dumps(cfg, indent=2))


def official_config_dict(config: Qwen3VLConfig) -> dict:
    """config.json as the official checkpoint writes it (transformers 4.57 style: rope_theta and
    rope_scaling in text_config), which transformers 4.57 and 5.x both read."""
    d = config.to_diff_dict()
    d["architectures"] = ["Qwen3VLForConditionalGeneration"]
    d["model_type"] = "qwen3_vl"
    text, vision = config.text_config.to_diff_dict(), config.vision_config.to_diff_dict()
    d["text_config"], d["vision_config"] = text, vision
    rope = dict(getattr(config.text_config, "rope_parameters", None) or text.get("rope_scaling") or {})
    text.pop("rope_parameters", None)
    if "rope_theta" in rope:
        text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    vision.pop("rope_parameters", None)  # 5.x default (axial, 10000); 4.57 has no such field
    for sub in (text, vision):
        for k in [k for k, v in sub.items() if v is None]:
            del sub[k]
        sub.pop("dtype", None)
    vision["model_type"] = "qwen3_vl"  # as the official file has it
    return d


def save_comfy_file(model: HiDreamO1, file, dtype=None) -> Path:
    """The ComfyUI single-file form: the same tensors under `diffusion_model.` instead of `model.`."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "diffusion_model." + k[len("model.") :]: (v.to(dtype) if dtype is not None else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(file))
    return file


def write_tiny_checkpoint(
    path,
    spec: TinySpec | None = None,
    corpus=None,
    vocab_size: int = 512,
    seed: int = 0,
    shards: int = 1,
    include_lm_head: bool = False,
) -> Path:
    """Build a random model + tokenizer from `spec` / `corpus` and write it in the official layout."""
    tokenizer = build_tokenizer(corpus, vocab_size)
    model, _ = build_model(spec, tokenizer, seed)
    save_checkpoint(model, path, tokenizer, shards=shards, include_lm_head=include_lm_head)
    (Path(path) / "tiny_spec.json").write_text(json.dumps(asdict(spec or TinySpec()), indent=2))
    return Path(path)


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    for name, default in asdict(TinySpec()).items():
        if isinstance(default, int):
            ap.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument(
        "--corpus", help="text file whose lines train the tokenizer (default: a shape-scene word list)"
    )
    args = ap.parse_args()
    spec = TinySpec(**{k: getattr(args, k) for k, v in asdict(TinySpec()).items() if isinstance(v, int)})
    corpus = Path(args.corpus).read_text().splitlines() if args.corpus else None
    out = write_tiny_checkpoint(args.out, spec, corpus, args.vocab_size, args.seed, args.shards)
    n = sum(p.numel() for p in build_model(spec)[0].parameters())
    print(f"wrote {out} ({n / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    _main()
