"""The small CPU training run the core trainer tests share: a tiny model at 64 px, rank 4, fp32, no
checkpoints or previews; each test file passes only what it changes."""

from __future__ import annotations

from core.train import TrainConfig


def tiny_train_config(tiny, data, out, **kw) -> TrainConfig:
    base = dict(
        model_path=str(tiny),
        data_dir=str(data),
        out_dir=str(out),
        resolution=64,
        min_side=32,
        steps=6,
        rank=4,
        alpha=4.0,
        lr=1e-2,
        batch_size=2,
        checkpoint_every=0,
        sample_every=0,
        trigger="flat style",
        gradient_checkpointing=False,
        device="cpu",
        precision="fp32",
    )
    base.update(kw)
    return TrainConfig(**base)
