"""Random full-size HiDream-O1 checkpoints, written tensor by tensor (host memory stays at one tensor).

    python -m core.fullsize /data/o1-full --comfy /data/o1-full.safetensors     # ~16 GB each, GPU: ~1 min
    python -m core.fullsize /tmp/small --spec tiny                               # the same code at test size

The folder is the official Hugging Face layout: config.json (Qwen3VLConfig at the real shape: hidden 4096,
36 layers, 32/8 heads, MLP 12288, vocab 151936, the 27-block vision tower), sharded bf16 safetensors
(model-0000k-of-0000n.safetensors, about --shard-gb each) + model.safetensors.index.json, generation_config.json
and a byte-level BPE tokenizer with the chat template (core.tiny's, trained on a word list: the real Qwen
tokenizer cannot be shipped). `--comfy FILE` also writes the ComfyUI single file (the same tensors under
`diffusion_model.`), copied from the shards so both hold identical weights, with config.json and the
tokenizer beside it (where core.loading looks for them).

Why not core.tiny.save_checkpoint: it builds the whole model in host memory and hands safetensors one dict,
i.e. 2-3 copies of 16 GB. Here the header is computed from the shapes (the model is built on the meta
device) and each tensor is drawn (on the GPU when there is one), copied to the host and appended.
Values follow core.tiny.init_weights' rule (unit-scale activations), seeded per tensor name.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

import torch

from core.atomic_files import atomic_file
from core.tiny import (
    DEFAULT_WORDS,
    TinySpec,
    _portable_tokenizer_config,
    build_tokenizer,
    official_config_dict,
    tiny_config,
)

FULL_SPEC = TinySpec(
    hidden=4096,
    layers=36,
    heads=32,
    kv_heads=8,
    head_dim=128,
    mlp=12288,
    vision_hidden=1152,
    vision_depth=27,
    vision_heads=16,
    vision_mlp=4304,
    deepstack=(8, 16, 24),
    vision_grid=48,
)
FULL_VOCAB = 151936
COMFY_PREFIX = "diffusion_model."
_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}

# Words for the tokenizer: enough English that prose captions tokenize roughly word by word.
CORPUS = list(DEFAULT_WORDS) + list(
    "sks style quiet harbour town at dusk painted loose watercolour washes boats resting calm water reflects "
    "warm lamps narrow houses shutters climbing hill soft clouds drifting over distant mountains gentle light "
    "muted colours visible paper texture bleeding edges where pigment pooled portrait photo of a woman man dog "
    "cat street city night forest river sky sun moon tree flower car house window door table chair book cup "
    "detailed high quality cinematic lighting sharp focus oil painting sketch drawing ink pencil".split()
)


def full_config(tokenizer, spec: TinySpec = FULL_SPEC, vocab: int | None = FULL_VOCAB):
    cfg = tiny_config(spec, tokenizer)
    if vocab:
        cfg.text_config.vocab_size = vocab
    return cfg


def tensor_plan(config) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(state-dict key, shape, dtype) of every tensor the checkpoint holds, in key order (model on meta)."""
    from core.model import HiDreamO1

    with torch.device("meta"):
        model = HiDreamO1(config)
    return [(k, tuple(v.shape), v.dtype) for k, v in sorted(model.state_dict().items())]


def random_tensor(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: torch.device
) -> torch.Tensor:
    """core.tiny.init_weights' rule for one tensor, seeded by (seed, name): any order, any device."""
    g = torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if name.endswith("embed_tokens.weight"):
        std, mean = 1.0, 0.0
    elif name.endswith("pos_embed.weight"):
        std, mean = 0.5, 0.0
    elif "norm" in name and len(shape) == 1:
        std, mean = (0.1, 1.0) if name.endswith("weight") else (0.05, 0.0)
    elif len(shape) == 1:
        std, mean = 0.05, 0.0
    else:
        std, mean = (1.0 / math.prod(shape[1:])) ** 0.5, 0.0
    t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
    return t.mul_(std).add_(mean).to(dtype)


def random_model(
    config,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
    base_precision: str = "bf16",
    fp8_matmul: str = "auto",
    seed: int = 0,
    offload_blocks: int = 0,
):
    """A HiDreamO1 with random_tensor's weights, built the way core.loading builds a checkpoint's: on the meta
    device, then one tensor at a time drawn on `device` and placed (fp8: quantised as it is placed), so the
    peak is the model at its final size plus one tensor. Same seed and name: the same weights as the
    checkpoint write_full_checkpoint writes (benchmarks skip the disk). offload_blocks: as load_model's (those
    layers' weights go to host memory as they are placed, and a core.offload.BlockOffload is installed)."""
    from core.fp8 import replace_with_fp8
    from core.loading import _place, _to_device_leftovers, _to_host
    from core.model import HiDreamO1
    from core.offload import BlockOffload, offloaded_layers

    device = torch.device(device)
    with torch.device("meta"):
        model = HiDreamO1(config)
    entries = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    if base_precision == "fp8":
        replace_with_fp8(model, dtype, device, fp8_matmul)
    n_layers = config.text_config.num_hidden_layers
    host = tuple(f"model.language_model.layers.{i}." for i in offloaded_layers(n_layers, offload_blocks))
    for name, shape, dt in entries:
        t = random_tensor(name, shape, dtype if dt.is_floating_point else dt, seed, device)
        _place(model, name, t)
        del t
        if host and name.startswith(host):
            _to_host(model, name)
    model.reset_rotary()
    _to_device_leftovers(model, device)
    if host:
        BlockOffload(model, offload_blocks, device)
    return model.eval()


def write_safetensors(
    path: Path,
    entries: list[tuple[str, tuple[int, ...], torch.dtype]],
    make: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a .safetensors file one tensor at a time; `make(name)` gives each tensor. Returns data bytes.

    The header (names, dtypes, shapes, offsets) is known from `entries` before any tensor exists, so the
    file is written front to back and only the tensor being written is ever in host memory.
    """
    header: dict = {}
    offset = 0
    for name, shape, dtype in entries:
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    # no half-written file under either name
    with atomic_file(path, mode=0o644) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in entries:
            t = make(name)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{name}: made {tuple(t.shape)} {t.dtype}, header says {shape} {dtype}")
            flat = t.detach().reshape(-1).contiguous().cpu()
            f.write(flat.view(torch.uint8).numpy().data)
            del t, flat
    return offset


def shard_entries(entries, shard_bytes: int) -> list[list]:
    """Consecutive groups of about shard_bytes each (a tensor larger than that gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for e in entries:
        n = math.prod(e[1]) * torch.empty((), dtype=e[2]).element_size()
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(e)
        size += n
    if cur:
        shards.append(cur)
    return shards


def write_full_checkpoint(
    out: str | Path,
    *,
    spec: TinySpec = FULL_SPEC,
    vocab: int | None = FULL_VOCAB,
    dtype: torch.dtype = torch.bfloat16,
    shard_gb: float = 5.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the HF folder; returns {"path", "bytes", "seconds", "shards"}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    tokenizer = build_tokenizer(CORPUS, vocab_size=2048)
    config = full_config(tokenizer, spec, vocab)
    entries = [(k, s, dtype if d.is_floating_point else d) for k, s, d in tensor_plan(config)]
    groups = shard_entries(entries, int(shard_gb * 2**30))
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        dtypes = {k: d for k, _, d in group}
        shapes = {k: s for k, s, _ in group}
        total += write_safetensors(
            out / name,
            group,
            lambda k: random_tensor(k, shapes[k], dtypes[k], seed, device),
            metadata={"format": "pt"},
        )
        weight_map.update({k: name for k, _, _ in group})
        log(f"  {name}: {len(group)} tensors, {time.perf_counter() - t0:.0f} s")
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    cfg = official_config_dict(config)
    cfg["dtype"] = str(dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    text = config.text_config
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id}, indent=2)
    )
    tokenizer.save_pretrained(str(out))
    _portable_tokenizer_config(out / "tokenizer_config.json")
    # Qwen3-VL folders also ship the template beside the processor; loaders read either
    (out / "chat_template.json").write_text(json.dumps({"chat_template": tokenizer.chat_template}))
    return {"path": out, "bytes": total, "seconds": time.perf_counter() - t0, "shards": len(groups)}


def write_comfy_file(folder: str | Path, file: str | Path) -> dict:
    """The ComfyUI single file of an HF folder: the same tensors under `diffusion_model.`, read one at a time."""
    from safetensors import safe_open

    folder, file = Path(folder), Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    entries, source = [], {}
    for key in sorted(weight_map):
        with safe_open(str(folder / weight_map[key]), framework="pt") as f:
            sl = f.get_slice(key)
            shape, dt = tuple(sl.get_shape()), sl.get_dtype()
        comfy = COMFY_PREFIX + key[len("model.") :]
        entries.append((comfy, shape, {v: k for k, v in _ST_DTYPES.items()}[dt]))
        source[comfy] = key
    handles: dict[str, object] = {}

    def make(comfy: str) -> torch.Tensor:
        shard = weight_map[source[comfy]]
        if shard not in handles:
            handles.clear()  # one shard open at a time
            handles[shard] = safe_open(str(folder / shard), framework="pt")
        return handles[shard].get_tensor(source[comfy])

    total = write_safetensors(file, entries, make)
    handles.clear()
    # core.loading reads a single file's config (and the service its tokenizer) from the file's folder
    for small in folder.iterdir():
        if small.is_file() and not small.name.startswith("model") and not (file.parent / small.name).exists():
            shutil.copy2(small, file.parent / small.name)
    return {"path": file, "bytes": total, "seconds": time.perf_counter() - t0}


def _main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write (official HF layout)")
    ap.add_argument("--comfy", help="also write the ComfyUI single file here")
    ap.add_argument("--spec", choices=("full", "tiny"), default="full", help="tiny: core.tiny's test size")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="where values are drawn (default: cuda if available)")
    a = ap.parse_args(argv)
    spec, vocab = (FULL_SPEC, FULL_VOCAB) if a.spec == "full" else (TinySpec(), None)
    r = write_full_checkpoint(a.out, spec=spec, vocab=vocab, shard_gb=a.shard_gb, seed=a.seed, device=a.device)
    print(
        f"wrote {r['path']}: {r['bytes'] / 1e9:.2f} GB in {r['shards']} shards, {r['seconds']:.1f} s", flush=True
    )
    if a.comfy:
        c = write_comfy_file(a.out, a.comfy)
        print(f"wrote {c['path']}: {c['bytes'] / 1e9:.2f} GB, {c['seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    _main()
