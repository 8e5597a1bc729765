"""Training on edit / personalisation samples: the sequence a training step feeds the model is, token for token
and position for position, the one the sampler builds for the same caption and references (and the loss is the
recipe's on the target tokens of that sequence); the tiny model learns an edit from pairs; previews show
references | with LoRA | without; the CLI takes such a dataset as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_train_config

from core.train import TrainConfig, Trainer

RED, BLUE = (200, 30, 30), (30, 30, 200)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from core.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def square(colour, box, size=(64, 64)) -> Image.Image:
    a = np.full((size[1], size[0], 3), 235, np.uint8)
    x, y, s = box
    a[y : y + s, x : x + s] = colour
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Four "make the square blue" pairs: a red square (reference) -> the same square in blue (target)."""
    d = tmp_path_factory.mktemp("pairs")
    lines = []
    for i, box in enumerate([(4, 4, 24), (30, 10, 20), (10, 34, 26), (36, 36, 22)]):
        square(RED, box, (80, 64)).save(d / f"in{i}.png")  # references need not have the target's size
        square(BLUE, box).save(d / f"out{i}.png")
        lines.append(
            json.dumps({"file": f"out{i}.png", "text": "make the square blue", "references": [f"in{i}.png"]})
        )
    (d / "metadata.jsonl").write_text("\n".join(lines))
    return d


def config(tiny, data, out, **kw) -> TrainConfig:
    return tiny_train_config(tiny, data, out, **{"steps": 2, "trigger": "", "prefetch": 0, **kw})


def test_training_sequence_is_the_samplers(tiny, pairs, tmp_path):
    from core.layout import collate
    from core.sampler import Sampler

    trainer = Trainer(config(tiny, pairs, tmp_path / "run", trigger="sks edit"))
    seen = []
    real = trainer.forward

    def recording(**kw):
        seen.append(kw)
        return real(**kw)

    trainer.forward = recording
    batch = next(iter(trainer.data))
    images, captions, refs, keys = batch
    g = torch.Generator().manual_seed(5)
    trainer.generator = g
    loss = trainer.loss_with_references(images, captions, refs, keys)
    assert len(seen) == 2 and all(len(r.ref_sizes) == 1 for r in refs)  # prepared by the data thread
    # the sampler gets the reference files themselves (the pairs are unflipped: key (target name, False))
    originals = [[Image.open(pairs / name.replace("out", "in"))] for name, flipped in keys]
    assert not any(flipped for _, flipped in keys)

    sampler = Sampler(trainer.model, trainer.tokenizer)
    replay = torch.Generator().manual_seed(5)
    want_loss = 0.0
    for k, kw in enumerate(seen):
        req = sampler._request(captions[k], " ", 64, 64, 2, None, 0, "full", None, None, 1, False, originals[k])
        b = collate([sampler._layout(req, captions[k])])
        assert captions[k].startswith("sks edit")
        for name in ("input_ids", "position_ids", "token_types"):
            assert torch.equal(kw[name], getattr(b, name)), name
        emb, deep = kw["vision"]
        want_emb, want_deep = trainer.model.vision_features(b.pixel_values, b.image_grid_thw)
        assert torch.equal(emb, want_emb) and all(torch.equal(x, y) for x, y in zip(deep, want_deep))
        n = b.n_image
        assert torch.equal(kw["vinputs"][:, n:], b.ref_patches)  # clean references after the target
        # the loss is the recipe's on the target rows of that very sequence
        from core.layout import patchify

        x0 = patchify(images[k : k + 1].float())
        z, t, sigma = trainer.objective.noise(x0, replay)
        assert torch.equal(kw["vinputs"][:, :n], z) and torch.equal(kw["timestep"], t)
        x_pred = real(**kw).x_pred
        L = b.input_ids.shape[1]
        want_loss += float(trainer.objective.loss(x_pred[:, L : L + n], x0, sigma).detach()) / len(seen)
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-6)


def test_previews_show_references_with_and_without_the_lora(tiny, pairs, tmp_path):
    result = Trainer(
        config(
            tiny,
            pairs,
            tmp_path / "run",
            steps=1,
            sample_every=1,
            sample_steps=1,
            sample_prompts=("make the square blue",),
            sample_size=64,
        )
    ).run()
    [preview] = result.previews
    img = np.asarray(Image.open(preview))
    assert img.shape == (64, 3 * 64, 3)  # references | with LoRA | without
    # the left panel is the reference (the red square of the first sample, fitted), not a sample
    assert (img[:, :64] == np.asarray(square(RED, (4, 4, 24), (80, 64)).resize((64, 51)))[0, 0]).all(
        -1
    ).mean() > 0.5


@pytest.mark.slow  # ~75 s on a loaded 2-core machine
def test_edit_lora_learns_pairs(tiny, pairs, tmp_path):
    cfg = config(
        tiny,
        pairs,
        tmp_path / "run",
        steps=25,
        batch_size=2,
        rank=8,
        alpha=8.0,
        lr=2e-2,
        extra_targets=("final_layer2", "x_embedder"),
    )
    trainer = Trainer(cfg)
    ds = trainer.data.dataset
    from core.data import collate_batch

    fixed = collate_batch([ds[k] for k in range(4)])

    def eval_loss():
        saved, trainer.generator = trainer.generator, torch.Generator().manual_seed(9)
        try:
            with torch.no_grad():
                return (
                    sum(
                        float(
                            trainer.loss_with_references(fixed["images"], fixed["captions"], fixed["references"])
                        )
                        for _ in range(4)
                    )
                    / 4
                )
        finally:
            trainer.generator = saved

    before = eval_loss()
    result = trainer.run()
    after = eval_loss()
    assert after < before / 2, (before, after)
    assert result.lora_file.is_file()


def test_cli_takes_an_edit_dataset(tiny, pairs, tmp_path):
    from core.train.cli import main

    result = main(
        [
            "--model",
            str(tiny),
            "--data_dir",
            str(pairs),
            "--out_dir",
            str(tmp_path / "cli"),
            "--resolution",
            "64",
            "--min_side",
            "32",
            "--steps",
            "2",
            "--rank",
            "4",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--num_workers",
            "0",
            "--checkpoint_every",
            "0",
            "--sample_every",
            "0",
            "--reference_dropout",
            "0.5",
            "--compile",
            "off",
        ]
    )
    assert result.steps_done == 2 and result.lora_file.is_file()


def test_validation_lays_out_references_as_training_does(tiny, pairs, tmp_path):
    """On an edit set the held-out loss sees each image with its references, in the sampler's (and the
    training step's) sequence, the vision tower once per image; without them the loss would measure a
    text-to-image task the LoRA is not trained for."""
    from core.layout import collate
    from core.sampler import Sampler

    trainer = Trainer(
        config(tiny, pairs, tmp_path / "run", validation_fraction=0.25, validation_sigmas=3, validation_seeds=2)
    )
    val = trainer.validator
    [item] = val.items
    assert len(item.references) == 1  # held out with its reference, never dropped
    seen, towers = [], []
    hook = trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    tower = trainer.model.vision_features
    trainer.model.vision_features = lambda *a: towers.append(1) or tower(*a)
    try:
        point = val.evaluate(trainer.model, trainer._inputs, bf16=False, tokenizer=trainer.tokenizer)
    finally:
        hook.remove()
        del trainer.model.vision_features
    assert len(seen) == 3 * 2 and len(towers) == 1  # sigmas x seeds forwards, one vision-tower run
    sampler = Sampler(trainer.model, trainer.tokenizer)
    req = sampler._request(item.caption, " ", 64, 64, 2, None, 0, "full", None, None, 1, False, item.references)
    b = collate([sampler._layout(req, item.caption)])
    for kw in seen:
        for name in ("input_ids", "position_ids", "token_types"):
            assert torch.equal(kw[name], getattr(b, name)), name
        assert torch.equal(kw["vinputs"][:, b.n_image :], b.ref_patches)  # clean reference after the target
    # the references matter: the same image and noise without them give another loss
    item.references = []
    without = val.evaluate(trainer.model, trainer._inputs, bf16=False, tokenizer=trainer.tokenizer)
    assert abs(point["loss"] - without["loss"]) > 1e-6
    assert point["samples"] == without["samples"] == 6
