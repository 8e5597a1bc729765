"""The validation loss: the recipe's objective on held-out images at fixed noise levels with fixed noise.

The training loss draws a new sigma and new noise every step, so two of its values differ mostly by chance.
Here every evaluation uses the same images, the same sigmas (evenly spread over (0, 1]: the midpoints of
`n_sigmas` equal bins) and the same noise (one draw per image and seed, from a generator seeded by constants,
never by the training run), so two evaluations differ only because the weights changed; on the CPU in float32
an unchanged LoRA gives the same loss bit for bit.

    val = FixedNoiseValidation(dataset, objective, n_sigmas=8, n_seeds=2, device=device)
    point = val.evaluate(model, inputs_for, bf16=False, tokenizer=tok)   # {"loss", "by_sigma", "seconds", ...}

`dataset` is a core.data.TrainDataset of the validation images seen plainly (TrainDataset.subset(plain=True):
same validation rules, trigger and aspect buckets as training, no flips or caption dropout). `inputs_for` is
the trainer's cached layout builder: (captions, height, width) -> (model inputs, number of image tokens).
An image with references (an edit / personalisation set) is laid out as training lays it out
(core.train.references: the vision-tower copy in the prompt, the clean raw patches after the target, the loss
on the target's tokens), one forward per sigma, the vision tower once per image; that needs `tokenizer`.
Cost: images x seeds x sigmas forward passes without gradients, batched up to ~32k tokens per call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.objective import Objective

NOISE_SEED = 14_000_000  # the validation noise belongs to the images, not to a run's seed
TOKENS_PER_CALL = 32_768  # sigmas of one image go through the model together, up to this many image tokens


def fixed_sigmas(n: int) -> torch.Tensor:
    """n noise levels evenly spread over (0, 1]: the midpoints of n equal bins (float32)."""
    return (torch.arange(n, dtype=torch.float64) + 0.5).div(n).to(torch.float32)


@dataclass
class _Item:
    x0: torch.Tensor  # [1, N, 3072] patch tokens, float32, CPU
    eps: list[torch.Tensor]  # one fixed noise draw per seed, like x0
    caption: str
    height: int
    width: int
    references: list = field(default_factory=list)  # PIL images, as the dataset gives them (no dropout, no flip)


class FixedNoiseValidation:
    def __init__(
        self,
        dataset,
        objective: Objective,
        *,
        n_sigmas: int = 8,
        n_seeds: int = 2,
        device: torch.device | str = "cpu",
        tokens_per_call: int = TOKENS_PER_CALL,
    ):
        from core.layout import patchify

        self.objective, self.device = objective, torch.device(device)
        self.tokens_per_call = tokens_per_call
        self.sigmas = fixed_sigmas(n_sigmas)
        self.items: list[_Item] = []
        for i in range(len(dataset.records)):
            item = dataset[i]
            x0 = patchify(item["image"][None].float())
            eps = [
                torch.randn(
                    x0.shape,
                    generator=torch.Generator().manual_seed(NOISE_SEED + 1009 * i + s),
                    dtype=torch.float32,
                )
                for s in range(n_seeds)
            ]
            h, w = item["image"].shape[-2:]
            self.items.append(_Item(x0, eps, item["caption"], int(h), int(w), list(item.get("references") or [])))
        self.names = [r.name for r in dataset.records]

    @property
    def samples(self) -> int:
        """Forward samples per evaluation."""
        return len(self.items) * len(self.items[0].eps) * len(self.sigmas) if self.items else 0

    def evaluate(self, model, inputs_for, *, bf16: bool, tokenizer=None) -> dict:
        """The mean loss over images x seeds x sigmas (and per sigma), in eval mode without gradients."""
        if tokenizer is None and any(item.references for item in self.items):
            raise ValueError("validation images with references need the tokenizer to be laid out")
        start = time.perf_counter()
        was_training = model.training
        model.eval()  # no LoRA dropout: the same weights give the same loss
        totals = [0.0] * len(self.sigmas)  # float64 sums on the host, in a fixed order
        try:
            with torch.no_grad():
                for item in self.items:
                    if item.references:
                        self._one_edit(model, tokenizer, item, bf16, totals)
                    else:
                        self._one_image(model, inputs_for, item, bf16, totals)
        finally:
            model.train(was_training)
        per_sigma = [t / (len(self.items) * len(self.items[0].eps)) for t in totals]
        return {
            "loss": sum(per_sigma) / len(per_sigma),
            "by_sigma": per_sigma,
            "seconds": time.perf_counter() - start,
            "samples": self.samples,
        }

    def _one_image(self, model, inputs_for, item: _Item, bf16: bool, totals: list[float]) -> None:
        n_tokens = item.x0.shape[1]
        per_call = max(1, self.tokens_per_call // n_tokens)
        x0 = item.x0.to(self.device)
        for eps in item.eps:
            eps = eps.to(self.device)
            for lo in range(0, len(self.sigmas), per_call):
                sigma = self.sigmas[lo : lo + per_call].to(self.device)
                b = len(sigma)
                x0_b = x0.expand(b, -1, -1)
                z = self.objective.mix(x0_b, eps.expand(b, -1, -1), sigma)
                inputs, n = inputs_for([item.caption] * b, item.height, item.width)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    x_pred = model(vinputs=z, timestep=1.0 - sigma, **inputs).x_pred
                losses = self.objective.per_sample(x_pred[:, -n:], x0_b, sigma).double().cpu().tolist()
                for j, value in enumerate(losses):
                    totals[lo + j] += value

    def _one_edit(self, model, tokenizer, item: _Item, bf16: bool, totals: list[float]) -> None:
        """An image with references, laid out as the trainer lays it out; the vision tower runs once for all
        its seeds and sigmas."""
        from core.train.references import edit_inputs, frozen_vision, reference_layout, target_slice

        batch = reference_layout(tokenizer, item.caption, item.references, item.height, item.width).to(self.device)
        x0 = item.x0.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            vision = frozen_vision(model, batch)
        target = target_slice(batch)
        for eps in item.eps:
            eps = eps.to(self.device)
            for j in range(len(self.sigmas)):
                sigma = self.sigmas[j : j + 1].to(self.device)
                z = self.objective.mix(x0, eps, sigma)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    x_pred = model(**edit_inputs(batch, z, 1.0 - sigma, vision)).x_pred
                totals[j] += float(self.objective.per_sample(x_pred[:, target], x0, sigma).double().sum())


def validation_set(cfg, train_dataset=None):
    """(training dataset, validation dataset or None): the images held out of cfg.data_dir, or those of
    cfg.validation_dir. `train_dataset` is the scanned training set (None: a generated stream, which can only
    be validated on a separate folder)."""
    from core.data import TrainDataset
    from core.data.holdout import held_out_names, ranked

    if not cfg.validation_every:
        return train_dataset, None
    if cfg.validation_dir:
        val = TrainDataset(
            cfg.validation_dir,
            resolution=cfg.resolution,
            trigger=cfg.trigger,
            min_side=min(cfg.min_side, cfg.resolution),
        )
        keep = set(ranked([r.name for r in val.records])[: cfg.validation_max_images])
        return train_dataset, val.subset(keep, keep=True, plain=True)
    if train_dataset is None:
        return None, None
    # Every image may be held out, reg/ ones (the user's, or the prior images, core.train.prior) included: holding
    # out styled images only shifted the bundled preset's balance of styled to prior images (22:24 instead of 23:21
    # in `make demo`) and its style strength from +0.51 to +0.44 (docs/evidence.md section 5).
    names = held_out_names(
        [r.name for r in train_dataset.records], cfg.validation_fraction, cfg.validation_max_images
    )
    if not names:
        return train_dataset, None
    return (train_dataset.subset(names, keep=False), train_dataset.subset(names, keep=True, plain=True))
