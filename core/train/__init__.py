"""Training a LoRA (or every weight of a small model) for HiDream-O1-Image.

    config.py       TrainConfig: every training parameter, its checks, the request -> config mapping (no torch)
    hooks.py        TrainCallbacks / TrainResult: what a caller passes in and gets back (no torch)
    trainer.py      Trainer, train(), train_full(): setup, the loop, checkpoints, previews, export
    data.py         where batches come from (dataset folder/zip, generated stream, prefetch thread)
    checkpoint.py   checkpoint folders written atomically
    distributed.py  several GPUs of one host (DDP under torchrun)
    preview.py      preview images, adapter on | off
    validation.py   the fixed-noise validation loss; validation_history.py: its series, best step, early stop
    cli.py          `python -m core.train`

Importing this package (or core.train.config) does not import torch: the HTTP API reads TrainConfig's
fields. The torch-side names below are loaded on first use.
"""

from core.train.config import REQUEST_NAMES, TrainConfig
from core.train.hooks import TrainCallbacks, TrainResult

_TRAINER_NAMES = ("Trainer", "train", "train_full", "lr_factor", "activation_bytes")
_CLI_NAMES = ("main", "config_from_args")

__all__ = ["REQUEST_NAMES", "TrainConfig", "TrainCallbacks", "TrainResult", *_TRAINER_NAMES, *_CLI_NAMES]


def __getattr__(name: str):
    # PEP 562: `from core.train import train` imports torch (through trainer) only when asked for.
    if name in _TRAINER_NAMES:
        from core.train import trainer

        return getattr(trainer, name)
    if name in _CLI_NAMES:
        from core.train import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'core.train' has no attribute {name!r}")
