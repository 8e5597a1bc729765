"""The CUDA path of the trainer (bf16 base, autocast, fused AdamW, compiled layers). Skipped without CUDA.

python -m pytest tests/core/test_train_gpu.py -m gpu -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from core.tiny import TinySpec, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("gpu")
    model = write_tiny_checkpoint(
        root / "model", TinySpec(hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, mlp=256)
    )
    data = root / "data"
    data.mkdir()
    for i in range(4):
        a = np.zeros((128, 128, 3), np.uint8)
        a[:64], a[64:] = (40 * i, 200 - 40 * i, 90), (220, 30 * i, 30)
        Image.fromarray(a).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"picture {i}" + " with words" * i)
    return model, data


@pytest.mark.parametrize("compile_layers", [False, True])
def test_cuda_lora_training_learns_and_exports(setup, tmp_path, compile_layers):
    from core.loading import load_model
    from core.lora import apply_loras, load_lora
    from core.train import TrainCallbacks, TrainConfig, Trainer

    model_dir, data = setup
    cfg = TrainConfig(
        model_path=str(model_dir),
        data_dir=str(data),
        out_dir=str(tmp_path),
        resolution=128,
        min_side=64,
        steps=60,
        batch_size=4,
        rank=8,
        alpha=8.0,
        lr=1e-2,
        checkpoint_every=30,
        sample_every=0,
        extra_targets=("final_layer2", "x_embedder"),
        compile=compile_layers,
        log_every=10,
    )
    losses = []
    trainer = Trainer(cfg, TrainCallbacks(on_step=lambda *a: losses.append(a[2])))
    assert trainer.device.type == "cuda" and trainer.bf16
    assert trainer.model.dtype == torch.bfloat16  # frozen base in bf16
    assert all(p.dtype == torch.float32 for p in trainer.params)  # adapter weights in fp32
    result = trainer.run()
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 2, losses
    base = load_model(model_dir, dtype=torch.bfloat16, device="cuda")
    bound = load_lora(base, result.lora_file, strict=True)
    assert len(bound.deltas) == 4 * 7 + 3
    # the exported file on a fresh bf16 base predicts like the trained in-memory adapter
    inputs, n = trainer._inputs(["picture 1 with words"], 128, 128)
    z = torch.randn(1, n, 3072, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([0.5], device="cuda")
    trainer.model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = trainer.forward(vinputs=z, timestep=t, **inputs).x_pred.float()
        with apply_loras(base, [(bound, 1.0)]):
            got = base(vinputs=z, timestep=t, **inputs).x_pred.float()
    assert (got - want).abs().mean() < 0.02 * want.abs().mean()


def test_cuda_full_mode_streams(setup, tmp_path):
    from core.train import TrainConfig, train_full
    from core.train.data import StreamData

    model_dir, _ = setup

    def stream(start):
        i = start
        while True:
            g = torch.Generator().manual_seed(i)
            yield torch.rand(3, 64, 64, generator=g) * 2 - 1, f"noise {i % 5}"
            i += 1

    cfg = TrainConfig(
        model_path=str(model_dir),
        out_dir=str(tmp_path),
        steps=20,
        batch_size=16,
        lr=1e-3,
        checkpoint_every=0,
        sample_every=0,
        log_every=10,
        gradient_checkpointing=False,
    )
    result = train_full(cfg, data=StreamData(stream, 16))
    assert result.steps_done == 20 and result.model_dir.is_dir()


def test_cuda_steps_never_wait_for_the_gpu(setup, tmp_path):
    """After warm-up, a step (data, layouts, forward, backward, clip, AdamW) and its report with log_every 1
    make no synchronising CUDA call: torch's sync debug mode raises on any (an .item(), a pageable copy...)."""
    from core.train import TrainCallbacks, TrainConfig, Trainer

    model_dir, data = setup
    cfg = TrainConfig(
        model_path=str(model_dir),
        data_dir=str(data),
        out_dir=str(tmp_path),
        resolution=128,
        min_side=64,
        steps=12,
        batch_size=2,
        rank=8,
        checkpoint_every=0,
        sample_every=0,
        log_every=1,
        compile=False,
    )
    losses = []
    trainer = Trainer(cfg, TrainCallbacks(on_step=lambda *a: losses.append(a[2])))
    step = trainer.train_step

    def strict_step(batches):
        torch.cuda.set_sync_debug_mode("error" if trainer.step >= 4 else "default")  # warm-up first
        try:
            return step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.train_step = strict_step
    trainer.run()
    assert len(losses) == 12 and all(np.isfinite(losses))
