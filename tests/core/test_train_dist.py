"""Two DDP processes (torchrun, gloo on the CPU): training runs, a stopped + resumed run equals an uninterrupted
one exactly, a killed run resumes on two ranks exactly and on one with the data position kept, and the
overlapped all-reduce (DDP) trains the same adapter as one all-reduce after backward. Slow (each test launches
processes that import torch): `make test-slow`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENTRY = Path(__file__).resolve().parent / "ddp_entry.py"


def torchrun(args: list[str], module: str | None = "core.train", ok: bool = True) -> None:
    """Two processes under torchrun: `python -m module args` (or the script args[0] when module is None)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *(["-m", module] if module else []),
        *args,
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (out.returncode == 0) == ok, out.stderr[-3000:]


def two_colour_images(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        a = np.zeros((64, 64, 3), np.uint8)
        a[:32], a[32:] = (30 * i, 200, 30), (200, 25 * i, 90)
        Image.fromarray(a).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"two colours number {i}" + " and more" * (i % 3))
    return folder


@pytest.mark.slow
def test_two_ranks_train_and_resume_exactly(tmp_path):
    from core.tiny import write_tiny_checkpoint

    model = write_tiny_checkpoint(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        a = np.zeros((64, 64, 3), np.uint8)
        a[:32], a[32:] = (50 * i, 200, 30), (200, 40 * i, 90)
        Image.fromarray(a).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"two colours number {i}" + " and more" * i)
    common = [
        "--model",
        str(model),
        "--data_dir",
        str(data),
        "--resolution",
        "64",
        "--min_side",
        "32",
        "--rank",
        "4",
        "--lr",
        "1e-2",
        "--batch_size",
        "1",
        "--checkpoint_every",
        "2",
        "--sample_every",
        "0",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--flip",
        "--caption_dropout",
        "0.3",
        # one image held out, validated by rank 0 every 2 steps; the other rank waits and agrees on stops
        "--validation_fraction",
        "0.25",
        "--validation_every",
        "2",
        "--validation_sigmas",
        "2",
        "--validation_seeds",
        "1",
        "--publish",
        "best",
    ]
    torchrun(common + ["--out_dir", str(tmp_path / "a"), "--steps", "4"])
    torchrun(common + ["--out_dir", str(tmp_path / "b"), "--steps", "2"])
    torchrun(common + ["--out_dir", str(tmp_path / "b"), "--steps", "4", "--resume"])
    a = load_file(str(tmp_path / "a" / "lora.safetensors"))
    b = load_file(str(tmp_path / "b" / "lora.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert any(float(a[k].abs().max()) > 0 for k in a if ".lora_B." in k)  # it trained
    state = torch.load(tmp_path / "b" / "checkpoints" / "step-000004" / "state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])  # own noise per rank
    full = torch.load(tmp_path / "a" / "checkpoints" / "step-000004" / "state.pt", weights_only=False)
    assert [p["step"] for p in state["validation"]["points"]] == [2, 4]  # the resume kept step 2's loss
    assert state["validation"]["baseline"]["loss"] == full["validation"]["baseline"]["loss"]
    for pa, pb in zip(full["validation"]["points"], state["validation"]["points"]):
        assert pa["loss"] == pytest.approx(pb["loss"], abs=1e-6)


def _facts(out: Path, rank: int) -> dict:
    return json.loads((out / "ranks" / f"{rank}.json").read_text())


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_on_two_ranks_exactly_and_on_one_with_the_data_position_kept(tmp_path):
    from core.tiny import write_tiny_checkpoint

    model = str(write_tiny_checkpoint(tmp_path / "model"))
    data = str(two_colour_images(tmp_path / "data", 8))  # 2 ranks, batch 1: an epoch is 4 steps
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    torchrun([str(ENTRY), "run", str(a), model, data], module=None)  # 8 steps, uninterrupted
    # Rank 0 SIGKILLs itself when step 3 is reported (after step 4 ran, before its checkpoint): torchrun then
    # ends rank 1 and fails. The newest checkpoint is step 2's, in the middle of epoch 0.
    torchrun([str(ENTRY), "run", str(b), model, data, "--kill_at", "3"], module=None, ok=False)
    assert sorted(p.name for p in (b / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-000002"]
    shutil.copytree(b, c)

    # on 2 ranks: every rank's every later step is the uninterrupted run's, and so is the adapter
    torchrun([str(ENTRY), "run", str(b), model, data, "--resume"], module=None)
    full, resumed = [_facts(a, r) for r in (0, 1)], [_facts(b, r) for r in (0, 1)]
    assert resumed[0]["resumed_at"] == 2
    for r in (0, 1):
        for step in map(str, range(3, 9)):
            assert resumed[r]["captions"][step] == full[r]["captions"][step]
            assert resumed[r]["loss"][step] == pytest.approx(full[r]["loss"][step], abs=1e-6)
    for step in map(str, range(3, 9)):  # the curve (the mean over ranks and its EMA) continues as well
        assert resumed[0]["reported"][step] == pytest.approx(full[0]["reported"][step], abs=1e-6)
    la, lb = (load_file(str(x / "lora.safetensors")) for x in (a, b))
    assert max(float((la[k] - lb[k]).abs().max()) for k in la) <= 1e-6

    # on 1 rank: it takes up the shared data order where the two ranks were (the rest of epoch 0, then epoch 1),
    # rank 0's noise stream and the step-2 weights, so its first step is exactly rank 0's step 3
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    out = subprocess.run(
        [sys.executable, str(ENTRY), "run", str(c), model, data, "--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    alone = _facts(c, 0)
    assert alone["resumed_at"] == 2 and sorted(alone["loss"], key=int) == [str(s) for s in range(3, 9)]
    shared = [full[r]["captions"][str(s)] for s in range(3, 6) for r in (0, 1)]  # A's order, both ranks
    assert [alone["captions"][str(s)] for s in range(3, 9)] == shared
    assert alone["loss"]["3"] == pytest.approx(full[0]["loss"]["3"], abs=1e-6)
    # the reported curve goes on from the checkpoint's smoothed loss, not from a fresh start
    raw = full[0]["reported"]["2"][1] * (1 - 0.9**2)  # the checkpoint's uncorrected EMA after 2 logged steps
    assert alone["reported"]["3"][1] == pytest.approx((0.9 * raw + 0.1 * alone["loss"]["3"]) / (1 - 0.9**3))
    end = torch.load(c / "checkpoints" / "step-000008" / "state.pt", weights_only=False)
    assert end["world_size"] == 1 and end["data"]["epoch"] == 1 and end["data"]["consumed"] == 2
    assert (c / "lora.safetensors").is_file()


@pytest.mark.slow
def test_the_overlapped_all_reduce_trains_the_same_adapter_as_one_all_reduce_after_backward(tmp_path):
    from core.tiny import write_tiny_checkpoint

    model = str(write_tiny_checkpoint(tmp_path / "model"))
    data = str(two_colour_images(tmp_path / "data", 8))
    torchrun([str(ENTRY), "compare", str(tmp_path), model, data], module=None)
    # "1": DDP with static_graph; "2": grad_accum 2, no_sync on the first micro-batch, no static graph;
    # "compiled": static graph around compiled decoder layers with gradient checkpointing inside them
    for case in ("1", "2", "compiled"):
        overlap = load_file(str(tmp_path / f"overlap-{case}.safetensors"))
        after = load_file(str(tmp_path / f"after-{case}.safetensors"))
        assert overlap.keys() == after.keys() and len(overlap) > 0
        assert max(float((overlap[k] - after[k]).abs().max()) for k in overlap) <= 1e-6
        assert any(float(overlap[k].abs().max()) > 0 for k in overlap if ".lora_B." in k)  # it trained
