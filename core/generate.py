"""Generate images with HiDream-O1-Image (optionally with LoRAs and reference images) from the command line.

    python -m core.generate --model /models/HiDream-O1-Image --prompt "a red fox in snow" --out fox.png
    python -m core.generate --model DIR --prompt "..." --preset dev --seed 7 --num_images 4 --out fox.png
    python -m core.generate --model DIR --prompt "..." --lora style.safetensors:0.8 --out styled.png
    python -m core.generate --model DIR --prompt "make it night" --ref photo.jpg --out night.png
    python -m core.generate --model DIR --prompt "..." --base_precision fp8 --offload_blocks 8 --out fox.png

--model is the checkpoint folder (or a ComfyUI single file, with --tokenizer/config beside it). With
--num_images N > 1 the files are <out stem>-<k><suffix>. Progress goes to stderr: step/total and s/step.
On the bundled models/o1-shapes, what is not given is that model's, as the service gives it (core.bundled):
256x256, and with the full preset 20 steps at CFG 2. Steps run eagerly (--compile compiles the decoder layers):
for one request a CUDA graph does not pay for its capture. On an H200 at full size, fp8, 1024^2, 50 steps, a
graph made each later step 89 instead of 98 ms but its capture cost 1.9 s: 7.0 s per image against 5.5
(bench/RESULTS.md). The service keeps its graphs from one request to the next, so it does use them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from core.presets import PRESETS
from core.schedulers import SCHEDULERS

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint folder or ComfyUI single file")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative_prompt", default=" ", help="the unconditional prompt of CFG (default ' ')")
    ap.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp)")
    ap.add_argument("--width", type=int, help="default 1024 (the bundled model: 256)")
    ap.add_argument("--height", type=int, help="default 1024 (the bundled model: 256)")
    ap.add_argument(
        "--snap", action="store_true", help="snap the size to the official ~4 MP list (quality default)"
    )
    ap.add_argument(
        "--preset",
        default="full",
        choices=sorted(PRESETS),
        help="full: 50 UniPC steps, CFG 5; dev: 28 fixed flash steps, no CFG; dev-edit: 28 fixed Euler steps",
    )
    ap.add_argument("--steps", type=int, help="override the preset's step count (the bundled model, full: 20)")
    ap.add_argument(
        "--guidance",
        type=float,
        help="override the preset's CFG scale, CFG runs when > 1 (the bundled model, full: 2)",
    )
    ap.add_argument("--scheduler", choices=SCHEDULERS, help="override the preset's scheduler")
    ap.add_argument("--shift", type=float, help="override the preset's time shift")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_images", type=int, default=1)
    ap.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="IMAGE",
        help="reference image conditioning the prompt (repeatable)",
    )
    ap.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="LoRA file or PEFT folder, optional scale (repeatable)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument(
        "--base_precision",
        choices=("auto", "bf16", "fp8"),
        default="auto",
        help="the base's decoder linears: bf16 (in --dtype), fp8 (float8 weights, half the memory; fp8 matmuls "
        "on CUDA cards of compute capability 8.9+), auto: fp8 on those cards or under 20 GiB, else bf16",
    )
    ap.add_argument(
        "--offload_blocks",
        type=int,
        default=0,
        metavar="N",
        help="keep N decoder layers in host memory and stream each to the GPU ahead of its turn (less GPU "
        "memory, slower steps)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder layers (CUDA)")
    return ap


def fill_model_defaults(args) -> None:
    """Size, steps and CFG the command line left out: the bundled model's own (core.bundled), else the official
    1024x1024 and the preset's steps and CFG."""
    from core.bundled import BUNDLED_IMAGE_SIDE, is_bundled_model, model_sampling

    side = BUNDLED_IMAGE_SIDE if is_bundled_model(args.model) else 1024
    given = {"width": side, "height": side, **model_sampling(args.model, args.preset)}
    for name, value in given.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(n)]


def unplaced_warning(path, unplaced: list[str], show: int = 5) -> str:
    """One warning naming how many entries of a LoRA file were not applied, and the first few with why."""
    more = f"\n  ... and {len(unplaced) - show} more" if len(unplaced) > show else ""
    return f"warning: LoRA {path}: {len(unplaced)} entries not applied:\n  " + "\n  ".join(unplaced[:show]) + more


class Progress:
    """Prints step/total and the mean seconds per step so far (model time, not loading)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.t0 = stream, None

    def start(self):
        self.t0 = time.perf_counter()

    def __call__(self, step: int, total: int, preview) -> None:
        per = (time.perf_counter() - self.t0) / step
        print(f"step {step}/{total}  {per:.2f} s/step", file=self.stream, flush=True)


def check_args(ap: argparse.ArgumentParser, args) -> None:
    fill_model_defaults(args)
    if args.width <= 0 or args.height <= 0 or (not args.snap and (args.width % 32 or args.height % 32)):
        ap.error(
            f"--width and --height must be positive multiples of 32 (got {args.width}x{args.height}); "
            f"or pass --snap"
        )
    if args.num_images < 1:
        ap.error(f"--num_images must be >= 1, got {args.num_images}")
    if args.offload_blocks < 0:
        ap.error(f"--offload_blocks must be >= 0, got {args.offload_blocks}")
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        ap.error(f"--out must end in .png, .jpg or .webp, got {args.out!r}")
    if not Path(args.model).exists():
        ap.error(f"--model {args.model!r} does not exist")
    for r in args.ref:
        if not Path(r).is_file():
            ap.error(f"--ref {r!r} is not a file")


def main(argv=None) -> list[Path]:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    from core.fp8 import resolve_base_precision
    from core.loading import load_model, load_tokenizer
    from core.sampler import Sampler

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    precision = resolve_base_precision(args.base_precision, device)
    t = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    model = load_model(
        args.model,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        base_precision=precision,
        offload_blocks=args.offload_blocks,
    )
    print(
        f"loaded {args.model} ({dtype}, base {precision}, {args.offload_blocks} layers offloaded, {device}) "
        f"in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    if args.lora:
        from core.lora import load_lora, parse_lora_arg, set_loras

        loras = []
        for arg in args.lora:
            path, scale = parse_lora_arg(arg)
            bound = load_lora(model, path)
            loras.append((bound, scale))
            print(f"LoRA {path} x {scale}: {len(bound.deltas)} modules", file=sys.stderr)
            if bound.unplaced:
                print(unplaced_warning(path, bound.unplaced), file=sys.stderr)
        set_loras(model, loras)
    refs = [Image.open(r).convert("RGB") for r in args.ref] or None

    progress = Progress()
    progress.start()
    sampler = Sampler(model, tokenizer, preview_every=0, compile=args.compile, compile_scope="layers")
    images = sampler(
        args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        preset=args.preset,
        scheduler=args.scheduler,
        shift=args.shift,
        num_images=args.num_images,
        callback=progress,
        snap=args.snap,
        references=refs,
    )
    out = output_paths(Path(args.out), len(images))
    for img, path in zip(images, out):
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        print(f"wrote {path} ({img.width}x{img.height})", file=sys.stderr)
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
