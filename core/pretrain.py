"""Pretrain a small HiDream-O1-architecture model from scratch on procedural shape scenes (the bundled model).

    python -m core.pretrain --out models/o1-shapes                         # on one GPU (bf16 autocast)
    python -m core.pretrain --out /tmp/smoke --minutes 0.2 --smoke          # CPU smoke run, tiny sizes

Same architecture code path (core.model.HiDreamO1 on stock Qwen3-VL modules), same 32-px patches, layout
and objective as the LoRA recipe (x0-MSE, noise scale 8, t = 1 - sigma, sigma ~ U(0.001, 1)); only smaller.
Why a pool: rendering ~10k scenes a second would need every CPU core, so the run first renders a fixed pool
of scenes per size in parallel (uint8, kept on the GPU) and then trains on random draws from it with no
host work per step. Captions are dropped to " " 10% of the time so classifier-free guidance works.
Writes the checkpoint in the official folder layout (bf16, sharded to stay under 16 MB a file), the
tokenizer, `pretrain_log.json` (loss curve, settings, timings).

Every third step is an edit step (core.pretrain_edits: keep the picture, change the background, move the
shape; one reference laid out as the sampler lays it out), so the model and its vision tower learn to read
a reference image; `--edit_batch 0` pretrains text-to-image only. A run longer than one sitting (the GPU
machine's 10-minute commands) is split: `--stop_after M` ends this process after M minutes and `--state F`
keeps the weights, optimiser, EMA and schedule position in F, which the next process resumes from, with a
fresh pool (`--pool_start`) so the second half sees new scenes. The schedule runs over `--minutes` in all.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.layout import generation_positions, patchify, prompt_ids
from core.loading import load_model, load_tokenizer
from core.objective import Objective
from core.parallel_ranges import map_ranges
from core.pretrain_edits import EditPool
from core.pretrain_weights import pool_shape_patches, weighted_patch_mse
from core.synth.edit_pairs import pretraining_instructions
from core.synth.fillers import with_filler
from core.synth.render import render
from core.synth.scene import sample_scene
from core.synth.vocab import BACKGROUNDS, COLOURS, REGION_PHRASES, SHAPES, SIZES
from core.tiny import TinySpec, build_model, build_tokenizer, save_checkpoint

# Words a user of the bundled model is likely to type beyond the scene vocabulary: the byte-level BPE
# encodes any text, but words it has merges for cost fewer tokens.
EXTRA_WORDS = (
    "a an the one two three and with on in of at to style drawing picture image photo painting "
    "hatched hatching outline outlined striped stripes sketch ink pen cartoon flat simple bold "
    "shape shapes object objects scene big little huge tiny middle corner side upper lower "
    "black white grey gray brown cyan magenta dark light bright pale"
).split()


def corpus(n_scenes: int = 4000) -> list[str]:
    words = list(EXTRA_WORDS) + list(SHAPES) + list(COLOURS) + list(BACKGROUNDS) + list(SIZES)
    words += list(REGION_PHRASES.values())
    return words + pretraining_instructions() + [sample_scene(7, i).caption() for i in range(n_scenes)]


def _render_chunk(start: int, stop: int, seed: int, size: int, filler: float = 0.0):
    imgs, caps = [], []
    for k in range(start, stop):
        scene = sample_scene(seed, k)
        imgs.append(np.asarray(render(scene, size), dtype=np.uint8))
        caps.append(with_filler(scene.caption(), seed, k, filler))
    return np.stack(imgs), caps


def render_pool(
    n: int, size: int, seed: int, workers: int, start: int = 0, filler: float = 0.0
) -> tuple[np.ndarray, list[str]]:
    """Scenes start..start+n of stream `seed` at `size` px, rendered in parallel: (uint8 [n, size, size, 3],
    captions, a share `filler` of them with a phrase around the scene: core.synth.fillers)."""
    parts = map_ranges(_render_chunk, start, n, workers, seed, size, filler)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


class TokenPool:
    """Captions as right-padded AR ids [n, A] + lengths, so a batch's layout is built on the device."""

    def __init__(self, tokenizer, captions: list[str], device):
        cache: dict[str, list[int]] = {}
        rows = [cache.setdefault(c, prompt_ids(tokenizer, c)) for c in captions]
        self.tms = rows[0][-1]
        if any(r[-1] != self.tms for r in rows):
            raise ValueError("every prompt must end with <|tms_token|>")
        ar = [r[:-1] for r in rows]
        width = max(map(len, ar))
        self.ids = torch.tensor([a + [0] * (width - len(a)) for a in ar], dtype=torch.long, device=device)
        self.lengths = torch.tensor([len(a) for a in ar], dtype=torch.long, device=device)
        empty = prompt_ids(tokenizer, " ")[:-1]
        self.empty_ids = torch.tensor(empty + [0] * (width - len(empty)), dtype=torch.long, device=device)
        self.empty_len = len(empty)


@lru_cache(maxsize=8)
def _image_positions(gh: int, gw: int, device: torch.device) -> torch.Tensor:
    """The layout's own image-grid positions, moved to the device once per size (not once per step)."""
    return generation_positions([(gh, gw)]).to(device)


def batch_inputs(tp: TokenPool, idx: torch.Tensor, drop: torch.Tensor, height: int, width: int) -> dict:
    """Model keyword inputs for pool rows `idx` (rows with `drop` get the empty prompt), image tokens last.

    Equivalent to core.layout.collate of build_t2i samples (tests/core/test_pretrain.py checks it): AR part
    right-padded, tms at each row's real length, image grid anchored at FIX_POINT.
    """
    dev = idx.device
    ids = torch.where(drop[:, None], tp.empty_ids[None], tp.ids[idx])
    lens = torch.where(drop, torch.full_like(idx, tp.empty_len), tp.lengths[idx])
    a = int(lens.max())
    ids = torch.cat([ids[:, :a], torch.full((len(idx), 1), tp.tms, dtype=torch.long, device=dev)], dim=1)
    b, gh, gw = len(idx), height // 32, width // 32
    ar_pos = torch.arange(a, device=dev).expand(b, a)
    img_pos = _image_positions(gh, gw, dev)  # [3, N]
    pos = torch.cat(
        [
            ar_pos[None].expand(3, b, a),
            lens[None, :, None].expand(3, b, 1),
            img_pos[:, None].expand(3, b, gh * gw),
        ],
        dim=2,
    )
    types = torch.cat(
        [
            torch.zeros(b, a, dtype=torch.long, device=dev),
            torch.ones(b, 1 + gh * gw, dtype=torch.long, device=dev),
        ],
        dim=1,
    )
    return dict(input_ids=ids, position_ids=pos, token_types=types, text_lengths=lens + 1)


@torch.no_grad()
def init_for_training(model, n_layers: int) -> None:
    """GPT-style init for training from scratch: N(0, 0.02), residual outputs scaled by 1/sqrt(2 L),
    norms at 1, biases 0, and final_layer2 at zero (as the official code initialises it)."""
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        elif "final_layer2" in name:
            p.zero_()
        else:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.normal_(0.0, std)


def _fresh_model(args):
    """A random model of the size flags, initialised for training from scratch, and a tokenizer built on the
    shape world's words."""
    tokenizer = build_tokenizer(corpus(), vocab_size=1024)
    spec = TinySpec(
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        mlp=args.mlp,
        vision_hidden=64,
        vision_depth=1,
        vision_heads=2,
        vision_mlp=128,
    )
    model, tokenizer = build_model(spec, tokenizer, seed=args.seed)
    init_for_training(model, args.layers)
    return model, tokenizer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=14.1, help="training wall-clock budget (after the pool)")
    ap.add_argument("--sizes", default="128,256", help="square training sizes, alternated step by step")
    ap.add_argument("--batch", default="1024,320", help="batch size per size")
    ap.add_argument("--pool", default="100000,30000", help="scenes rendered per size")
    ap.add_argument("--lr", type=float, default=1.2e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption_dropout", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--mlp", type=int, default=1024)
    ap.add_argument("--edit_batch", type=int, default=384, help="batch of every third step (edits); 0: none")
    ap.add_argument("--edit_pool", type=int, default=12000, help="edit pairs rendered (at the first size)")
    ap.add_argument("--pool_start", type=int, default=0, help="first scene index of the pools (a resumed run)")
    ap.add_argument("--state", help="resume from this file if it exists, and write the run's state to it")
    ap.add_argument("--stop_after", type=float, help="minutes this process trains (default: the whole budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init",
        help="start from this checkpoint folder (its weights and tokenizer; the size flags "
        "are ignored) instead of a random model: a continued pretraining",
    )
    ap.add_argument(
        "--filler",
        type=float,
        default=0.0,
        help="share of captions with a phrase that says nothing around the scene (core.synth.fillers)",
    )
    ap.add_argument(
        "--sigma_shift",
        type=float,
        default=1.0,
        help="sigma ~ shifted uniform s*u/(1+(s-1)u): below 1 more of the low-noise steps that draw "
        "detail (1: the recipe's uniform)",
    )
    ap.add_argument(
        "--shape_weight",
        type=float,
        default=0.0,
        help="text-to-image patches that a shape touches count 1 + this many times in the loss "
        "(core.pretrain_weights; 0: the recipe's plain MSE)",
    )
    ap.add_argument(
        "--cycle",
        help="the order the step kinds repeat in, as indices into the sizes then the edits, e.g. 0,0,1,2: "
        "128 px twice as often (default: each once)",
    )
    ap.add_argument("--lr_floor", type=float, default=0.1, help="the cosine ends at this fraction of --lr")
    ap.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the decoder layers (auto: on CUDA)",
    )
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check of the whole script")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch, args.pool = "64,96", "4,2", "16,8"
        args.edit_batch, args.edit_pool = min(args.edit_batch, 2), 4
        args.hidden, args.layers, args.heads, args.kv_heads, args.head_dim, args.mlp = 32, 2, 2, 1, 16, 64

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    pools = [int(n) for n in args.pool.split(",")]
    t_start = time.time()

    # Render first: the pool's worker processes are forked before CUDA is initialised in this one.
    workers = max(1, min(16, (mp.cpu_count() or 1) - 1))
    data = []
    for size, n, b in zip(sizes, pools, batches):
        imgs, caps = render_pool(n, size, args.seed + size, workers, args.pool_start, args.filler)
        data.append((size, b, imgs, caps))
    edits = None
    if args.edit_batch:
        edits = EditPool.render(args.seed + 7, args.pool_start, args.edit_pool, sizes[0], workers)
    if args.init:
        model, tokenizer = load_model(args.init), load_tokenizer(args.init)
    else:
        model, tokenizer = _fresh_model(args)
    model.to(device).train()
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        model.compile_layers()
    n_params = sum(p.numel() for p in model.parameters())
    # The vision tower only sees edits: without them it is not trained.
    params = [p for n, p in model.named_parameters() if edits is not None or ".visual." not in n]

    data = [
        (size, b, torch.from_numpy(imgs).to(device), TokenPool(tokenizer, caps, device))
        for size, b, imgs, caps in data
    ]
    kinds = ["t2i"] * len(data)
    if edits is not None:
        data.append((edits.size, args.edit_batch, None, edits.to(device, tokenizer)))
        kinds.append("edit")
    t_pool = time.time() - t_start
    print(
        f"{n_params / 1e6:.2f}M parameters; pools {[len(d[3]) if d[2] is None else len(d[2]) for d in data]} "
        f"rendered in {t_pool:.0f}s",
        flush=True,
    )

    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01, fused=fused)
    ema = [p.detach().clone().float() for p in params]
    obj = Objective() if args.sigma_shift == 1.0 else Objective(sigma_dist="shifted", shift=args.sigma_shift)
    gen = torch.Generator(device=device).manual_seed(args.seed + args.pool_start)
    log, step, before, sittings = [], 0, 0.0, []
    state_file = Path(args.state) if args.state else None
    if state_file is not None and state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        log, step, before = state["log"], state["step"], state["seconds"]
        sittings = state.get("sittings", [])
        print(f"resumed at step {step}, {before:.0f}s into the schedule", flush=True)
    # the patches each pool scene's shapes touch, for --shape_weight: once, on the device
    shapes = [pool_shape_patches(d[2]) if args.shape_weight and d[2] is not None else None for d in data]
    cycle = [int(k) for k in args.cycle.split(",")] if args.cycle else list(range(len(data)))
    if not cycle or not all(0 <= k < len(data) for k in cycle):
        raise SystemExit(f"--cycle {args.cycle!r}: indices must lie in 0..{len(data) - 1}")
    acc, acc_n = torch.zeros(len(data), device=device), torch.zeros(len(data), device=device)
    budget = args.minutes * 60
    mine = args.stop_after * 60 if args.stop_after else budget
    t0 = time.time()
    while True:
        elapsed = before + time.time() - t0
        if elapsed > budget or time.time() - t0 > mine:
            break
        kind = cycle[step % len(cycle)]
        size, bsz, imgs, tp = data[kind]
        # warm-up, then cosine down to lr_floor over the time budget (steps are not known in advance)
        frac, floor = min(1.0, elapsed / budget), args.lr_floor
        lr = (
            args.lr
            * min(1.0, (step + 1) / args.warmup)
            * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(tp) if imgs is None else imgs.shape[0], (bsz,), device=device, generator=gen)
        drop = torch.rand(bsz, device=device, generator=gen) < args.caption_dropout
        if imgs is None:  # an edit step: the clean reference patches follow the noised target
            inputs, x0, refs = tp.batch(idx, drop)
            z_t, t, sigma = obj.noise(x0, gen)
            vinputs, target = torch.cat([z_t, refs], dim=1), tp.target(inputs)
        else:
            x0 = patchify(imgs[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0)
            z_t, t, sigma = obj.noise(x0, gen)
            inputs, vinputs = batch_inputs(tp, idx, drop, size, size), z_t
            target = slice(-x0.shape[1], None)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x_pred = model(vinputs=vinputs, timestep=t, **inputs).x_pred[:, target]
        if imgs is not None and args.shape_weight:
            loss = weighted_patch_mse(x_pred, x0, shapes[kind][idx], args.shape_weight)
        else:
            loss = obj.loss(x_pred.float(), x0, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - args.ema)
        acc[kind] += loss.detach()
        acc_n[kind] += 1
        step += 1
        if step % 200 == 0 or args.smoke:
            means = (acc / acc_n.clamp(min=1)).tolist()  # the only host sync: every 200 steps
            seconds = before + time.time() - t0
            entry = {"step": step, "seconds": round(seconds, 1), "lr": lr}
            entry["loss"] = round(sum(m for m, k in zip(means, kinds) if k == "t2i") / kinds.count("t2i"), 5)
            if "edit" in kinds:
                entry["edit_loss"] = round(means[kinds.index("edit")], 5)
            log.append(entry)
            print(
                f"step {step} t={seconds:.0f}s " + " ".join(f"{k} {v}" for k, v in entry.items() if "loss" in k),
                flush=True,
            )
            acc.zero_()
            acc_n.zero_()
    train_s = before + time.time() - t0
    # what each process drew its pools from and how long it trained (held-out tests read the pool ranges)
    keys = "minutes stop_after sizes batch pool edit_batch edit_pool pool_start lr seed init filler lr_floor sigma_shift shape_weight cycle".split()
    sittings.append({**{k: getattr(args, k) for k in keys}, "steps_to": step, "seconds_to": round(train_s, 1)})
    if state_file is not None:
        state = dict(model=model.state_dict(), opt=opt.state_dict(), ema=ema, log=log, step=step, seconds=train_s)
        state["sittings"] = sittings
        torch.save(state, state_file)

    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e.to(p.dtype))
    model.eval()
    out = Path(args.out)
    save_checkpoint(model, out, tokenizer, shards=args.shards, dtype=torch.bfloat16)
    (out / "pretrain_log.json").write_text(
        json.dumps(
            {
                "parameters": n_params,
                "steps": step,
                "train_seconds": round(train_s, 1),
                "pool_seconds": round(t_pool, 1),
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "settings": vars(args),
                "sittings": sittings,
                "loss_curve": log,
            },
            indent=1,
        )
    )
    print(f"done: {step} steps in {train_s:.0f}s; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
