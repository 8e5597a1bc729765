"""What each process of the multi-rank tests runs (under torchrun, or alone for one rank): the core trainer on
the tiny model, with the per-rank facts the tests compare written to JSON files.

    python -m torch.distributed.run --nproc_per_node 2 tests/core/ddp_entry.py run OUT MODEL DATA --steps 8 \
        [--resume] [--kill_at K]
    python -m torch.distributed.run --nproc_per_node 2 tests/core/ddp_entry.py compare OUT MODEL DATA

run: one training; OUT/ranks/<rank>.json holds this rank's loss and captions per step (the rank's own, before
any averaging), and --kill_at K SIGKILLs rank 0 once step K is reported (a crash: no checkpoint, no clean exit).
compare: the same short trainings with grad_sync "overlap" (DDP) and "after" (one all-reduce after backward),
for grad_accum 1 (DDP's static graph), 2 (no_sync) and 1 with compiled layers + gradient checkpointing, in one
process group; rank 0 writes the adapters to OUT/<grad_sync>-<case>.safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import tiny_train_config  # noqa: E402

from core.train import TrainCallbacks, Trainer  # noqa: E402


def config(model: str, data: str, out: Path, **kw):
    base = dict(
        batch_size=1,
        steps=8,
        checkpoint_every=2,
        keep_checkpoints=0,
        flip=True,
        validation_fraction=0.0,
        lr=2e-2,
    )
    base.update(kw)
    return tiny_train_config(model, data, out, **base)


def record(trainer: Trainer, facts: dict) -> None:
    """Wrap the trainer's step so that each step's own loss and captions land in `facts` (on this rank)."""
    loss_of, step_of = trainer.loss, trainer.train_step

    def loss(images, captions):
        facts["captions"].setdefault(str(trainer.step + 1), []).extend(captions)
        return loss_of(images, captions)

    def train_step(batches):
        value = step_of(batches)
        facts["loss"][str(trainer.step)] = float(value)  # a host sync: fine on the CPU, in a test
        return value

    trainer.loss, trainer.train_step = loss, train_step


def run(a) -> None:
    rank = int(os.environ.get("RANK", "0"))
    facts = {"loss": {}, "captions": {}, "reported": {}}
    out = Path(a.out)
    path = out / "ranks" / f"{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def on_step(step, total, loss, smoothed, lr, sec, eta):
        facts["reported"][str(step)] = [loss, smoothed]
        path.write_text(json.dumps(facts))
        if step == a.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = config(a.model, a.data, out, steps=a.steps, resume="latest" if a.resume else None)
    trainer = Trainer(cfg, TrainCallbacks(on_step=on_step))
    record(trainer, facts)
    facts["resumed_at"] = trainer.step
    trainer.run()
    path.write_text(json.dumps(facts))


def compare(a) -> None:
    from safetensors.torch import save_file

    from core.lora import adapter_state_dict

    # 1: DDP's static graph; 2: no_sync on the first micro-batch (no static graph); compiled: the decoder layers
    # compiled, with gradient checkpointing traced inside them, under the static graph
    cases = {
        "1": dict(grad_accum=1),
        "2": dict(grad_accum=2),
        "compiled": dict(grad_accum=1, compile=True, gradient_checkpointing=True),
    }
    for case, kw in cases.items():
        for sync in ("overlap", "after"):
            out = Path(a.out) / f"{sync}-{case}"
            cfg = config(a.model, a.data, out, steps=4, grad_sync=sync, checkpoint_every=0, **kw)
            trainer = Trainer(cfg)
            assert trainer.grad_sync == sync and trainer.compiled == kw.get("compile", False)
            trainer.run()
            if trainer.dist.main:
                weights = {k: v.detach().contiguous() for k, v in adapter_state_dict(trainer.model).items()}
                save_file(weights, str(Path(a.out) / f"{sync}-{case}.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("run", "compare"))
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill_at", type=int, default=-1)
    a = ap.parse_args()
    run(a) if a.what == "run" else compare(a)


if __name__ == "__main__":
    main()
