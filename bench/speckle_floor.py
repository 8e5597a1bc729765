"""How low can the bundled model's patch speckle go at its width? (issue 13, CPU, ~1 min)

    python bench/speckle_floor.py [models/o1-shapes]

HiDream-O1 draws a 32-px patch as `final_layer2(h)`: one linear map from the hidden state (384 values in the
bundled model, 4096 in the real one) to the patch's 3,072 pixel values, plus a bias. Every patch the bundled
model can output therefore lies in a 384-dimensional affine subspace of the 3,072-dimensional patch space, and
the sampler's last step returns such a patch. A render's patch that straddles a shape's edge is not in that
subspace; its nearest point in it differs from it, and the difference spreads over the whole patch, where it
shows as faint coloured noise around the shape: the speckle core.synth.speckle measures.

This script renders the held-out scenes (stream 999, single shapes) and scores, with core.synth's measures:
  render             the render itself (speckle 0 by construction)
  head subspace      each render patch replaced by its least-squares projection onto the model's own head
                     subspace (bias + span of final_layer2's columns): the best any model with these head
                     weights could draw
  PCA rank k         the best k-dimensional affine subspace for render patches (principal components of 800 or
                     3,000 training-stream scenes): what a head of width k could reach at best, for k = 96 ...
                     1,024 (the bundled model's width is 384)
at 128 and 256 px, next to what the model itself draws (bench/eval_bundled.py: 3.0 / 2.3 at CFG 2).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.transforms import to_tensor  # noqa: E402
from core.layout import patchify  # noqa: E402
from core.sampler import to_pil  # noqa: E402
from core.synth import render, sample_scene  # noqa: E402
from core.synth.evaluate import evaluate  # noqa: E402

RANKS = (96, 192, 384, 512, 768, 1024)


def tokens(images: list) -> torch.Tensor:
    return patchify(torch.stack([to_tensor(i) for i in images]))


def images(tok: torch.Tensor, size: int) -> list:
    return to_pil(tok, size, size)


def scores(tok: torch.Tensor, size: int, scenes) -> dict:
    out = evaluate(list(zip(images(tok, size), [s.labels() for s in scenes])))
    return {k: round(out[k], 3) for k in ("mean_speckle", "mean_shape_acc", "small_shape_acc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(Path(__file__).resolve().parents[1] / "models" / "o1-shapes"))
    ap.add_argument("--n", type=int, default=48)
    a = ap.parse_args()
    sd = {}
    for f in glob.glob(f"{a.model}/*.safetensors"):
        sd.update({k: v.float() for k, v in load_file(f).items() if "final_layer2" in k})
    w, b = sd["model.final_layer2.linear.weight"], sd["model.final_layer2.linear.bias"]  # [3072, hidden]
    q, _ = torch.linalg.qr(w)
    print(f"head: {w.shape[1]} -> {w.shape[0]}")
    print("| size | patches | speckle | shape right | small shapes right |\n|---|---|---:|---:|---:|")
    for size in (128, 256):
        scenes = [sample_scene(999, i, two_shape_prob=0.0) for i in range(a.n)]
        tok = tokens([render(s, size) for s in scenes])
        rows = {"render": tok, f"head subspace (rank {w.shape[1]})": (tok - b) @ q @ q.T + b}
        train = [sample_scene(5, i, two_shape_prob=0.5) for i in range(3000 if size == 128 else 800)]
        t = tokens([render(s, size) for s in train]).reshape(-1, 3072)
        mu = t.mean(0)
        _, _, vh = torch.linalg.svd(t - mu, full_matrices=False)
        for k in RANKS:
            v = vh[:k].T
            rows[f"PCA rank {k}"] = (tok - mu) @ v @ v.T + mu
        for name, x in rows.items():
            s = scores(x, size, scenes)
            print(f"| {size} | {name} | {s['mean_speckle']} | {s['mean_shape_acc']} | {s['small_shape_acc']} |")


if __name__ == "__main__":
    main()
