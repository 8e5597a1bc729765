"""Two DDP processes (torchrun, gloo on the CPU): training runs, and a stopped + resumed run equals an
uninterrupted one exactly. Slow (three launches of two processes): `make test-slow`."""

from __future__ import annotations

import os
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


def torchrun(args: list[str]) -> None:
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
        "-m",
        "core.train",
        *args,
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


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
