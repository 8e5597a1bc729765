"""Preview images during training: each sample prompt with the adapter on (left) and off (right), same seed;
with references (an edit dataset): the references | adapter on | adapter off, all conditioned on them.

    paths = render_previews(model, tokenizer, ["sks style, a cat"], step=500, out_dir=Path("run/previews"),
                            width=1024, height=1024, steps=20, guidance=5.0, seed=0, preset="full", lora=True)
    # -> run/previews/step-000500-0.png ...

Rendering must not disturb training: the model goes to eval mode under no_grad and comes back to train
mode, and every global RNG stream is forked, so a run with previews trains exactly like one without.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from core.lora import set_adapter_enabled


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def reference_panel(references: list[Image.Image], width: int, height: int) -> Image.Image:
    """The references stacked top to bottom in a width x height panel, each fitted into its cell."""
    panel = Image.new("RGB", (width, height), "white")
    cell = height // len(references)
    for i, ref in enumerate(references):
        fitted = ref.copy()
        fitted.thumbnail((width, max(1, cell)))
        panel.paste(fitted, ((width - fitted.width) // 2, i * cell + (cell - fitted.height) // 2))
    return panel


def render_previews(
    model,
    tokenizer,
    prompts: list[str],
    *,
    step: int,
    out_dir: Path,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    seed: int,
    preset: str,
    lora: bool,
    references: list[Image.Image] | None = None,
) -> list[Path]:
    from core.sampler import Sampler

    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    sampler = Sampler(model, tokenizer)
    paths = []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for k, prompt in enumerate(prompts):
                kw = dict(
                    width=width,
                    height=height,
                    steps=steps,
                    guidance=guidance,
                    seed=seed,
                    preset=preset,
                    references=references or None,
                )
                on = sampler([prompt], **kw)[0]
                if lora:
                    set_adapter_enabled(model, False)
                    try:
                        off = sampler([prompt], **kw)[0]
                    finally:
                        set_adapter_enabled(model, True)
                    img = side_by_side(on, off)
                else:
                    img = on
                if references:
                    img = side_by_side(reference_panel(references, width, height), img)
                path = out_dir / f"step-{step:06d}-{k}.png"
                tmp = path.with_suffix(".tmp.png")
                img.save(tmp)
                tmp.replace(path)  # readers (the API) never see half a PNG
                paths.append(path)
    finally:
        model.train(was_training)
    return paths
