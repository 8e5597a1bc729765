"""Does the bundled model (or a LoRA on it) use the reference? The recipe's loss on edit pairs at fixed noise
levels, with the sequence varied one part at a time (docs/evidence.md, 3):

    t2i        no reference at all (the text-to-image layout of the instruction)
    edit       the official edit layout with the pair's own reference
    other      the same layout with another pair's reference (a model that copies the reference gets worse)
    vision0    the edit layout with the vision tower's features (and DeepStack) zeroed
    no_raw     the edit layout without the raw reference patches after the target

    PYTHONPATH=. python bench/edit_reference_probe.py runs/edit/b4/pairs [--lora runs/edit/b4/run/lora.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from core.layout import patchify, to_unit_range
from core.loading import load_model, load_tokenizer
from core.lora import apply_loras, load_lora
from core.train.references import reference_layout

MODEL = Path(__file__).resolve().parents[1] / "models" / "o1-shapes"
SIGMAS = (0.2, 0.5, 0.8, 0.95)


def variants(model, tok, text, ref, other, z, t):
    """name -> model inputs (square targets)."""
    h = w = int(round(z.shape[1] ** 0.5)) * 32
    edit = reference_layout(tok, text, [ref], h, w)
    out = {"t2i": reference_layout(tok, text, [], h, w).model_inputs(z, t)}
    out["edit"] = edit.model_inputs(edit.vinputs(z), t)
    b = reference_layout(tok, text, [other], h, w)
    out["other"] = b.model_inputs(b.vinputs(z), t)
    emb, deep = model.vision_features(edit.pixel_values, edit.image_grid_thw)
    i = edit.model_inputs(edit.vinputs(z), t)
    i.update(pixel_values=None, image_grid_thw=None, vision=(emb * 0, [d * 0 for d in deep]))
    out["vision0"] = i
    m = edit.n_ref
    i = edit.model_inputs(z, t)
    i.update(position_ids=edit.position_ids[..., :-m], token_types=edit.token_types[:, :-m])
    out["no_raw"] = i
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", help="a folder of in-k.png / out-k.png (bench/edit_lora_explore.py writes one)")
    ap.add_argument("--lora", default=None)
    ap.add_argument("--text", default="make the shape blue")
    ap.add_argument("--n", type=int, default=6)
    a = ap.parse_args(argv)
    pairs = Path(a.pairs)
    model, tok = load_model(MODEL, torch.float32, "cpu"), load_tokenizer(MODEL)
    loras = {"base": []}
    if a.lora:
        loras["lora"] = [(load_lora(model, a.lora), 1.0)]
    g = torch.Generator().manual_seed(0)
    res: dict = {}
    with torch.no_grad():
        for k in range(a.n):
            x0 = patchify(to_unit_range(Image.open(pairs / f"out-{k}.png").convert("RGB"))[None])
            ref = Image.open(pairs / f"in-{k}.png").convert("RGB")
            other = Image.open(pairs / f"in-{(k + 1) % a.n}.png").convert("RGB")
            for sigma in SIGMAS:
                z = (1 - sigma) * x0 + sigma * 8 * torch.randn(x0.shape, generator=g)
                t = torch.tensor([1 - sigma])
                for name, active in loras.items():
                    with apply_loras(model, active):
                        for v, inputs in variants(model, tok, a.text, ref, other, z, t).items():
                            start = inputs["input_ids"].shape[1]
                            x_pred = model(**inputs).x_pred[:, start : start + x0.shape[1]]
                            res.setdefault((name, v), {}).setdefault(sigma, []).append(
                                float(((x_pred - x0) ** 2).mean())
                            )
    print("model   layout   " + "  ".join(f"s={s:<5}" for s in SIGMAS) + "  (MSE of x_pred on the target)")
    for (name, v), by_sigma in res.items():
        print(f"{name:7} {v:8} " + "  ".join(f"{sum(x) / len(x):.4f} " for x in by_sigma.values()))


if __name__ == "__main__":
    main()
