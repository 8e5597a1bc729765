"""Training (see core.train.trainer); `from core.train import TrainConfig, TrainCallbacks, train` keeps working."""
from core.train.trainer import (TrainCallbacks, TrainConfig, Trainer, TrainResult, activation_bytes,  # noqa: F401
                                config_from_args, lr_factor, main, train, train_full)
