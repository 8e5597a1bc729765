"""Small images are checked against the training resolution, not a fixed 256 px: a dataset of 128-px images
(what `core.synth --size 128` writes) trains at --resolution 128, and validation without a fixed training
resolution (an upload) names small images in a warning instead of refusing them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data import DatasetError, validate_dataset


def images(folder, size, n=2):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 60 + 90 * i, np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a grey rectangle number {i}")
    return folder


def test_warn_below_keeps_small_images_and_names_them(tmp_path):
    data = images(tmp_path / "d", (128, 128))
    with pytest.raises(DatasetError, match="shortest side under 256"):
        validate_dataset(data, resolution=1024, min_side=256, strict=True)
    report = validate_dataset(data, resolution=1024, min_side=32, warn_below=256, strict=True)
    assert report.usable == 2 and not report.too_small
    assert [i.name for i in report.small] == ["0.png", "1.png"]
    assert any(
        "2 image(s) have a shortest side under 256 px" in w and "0.png (128x128)" in w for w in report.warnings
    ), report.warnings


def test_train_cli_at_128_trains_on_160x128_images_with_the_default_min_side(tmp_path):
    from core.tiny import write_tiny_checkpoint
    from core.train import TrainConfig, main

    assert TrainConfig.min_side == 256  # the default stays; the trainer never asks for more than resolution
    model = write_tiny_checkpoint(tmp_path / "model")
    data = images(tmp_path / "data", (160, 128))
    result = main(
        [
            "--model",
            str(model),
            "--data_dir",
            str(data),
            "--out_dir",
            str(tmp_path / "run"),
            "--resolution",
            "128",
            "--rank",
            "2",
            "--steps",
            "1",
            "--sample_every",
            "0",
            "--checkpoint_every",
            "0",
            "--num_workers",
            "0",
            "--precision",
            "fp32",
            "--device",
            "cpu",
        ]
    )
    assert result.steps_done == 1 and result.lora_file.is_file()
    with pytest.raises(DatasetError, match="shortest side under 256"):  # at 512 they are too small
        main(
            [
                "--model",
                str(model),
                "--data_dir",
                str(data),
                "--out_dir",
                str(tmp_path / "run2"),
                "--resolution",
                "512",
                "--rank",
                "2",
                "--steps",
                "1",
                "--sample_every",
                "0",
                "--checkpoint_every",
                "0",
                "--num_workers",
                "0",
                "--precision",
                "fp32",
                "--device",
                "cpu",
            ]
        )


def test_training_start_names_the_dataset_without_its_server_location(tmp_path):
    """A training that finds its images too small at its resolution fails with a message for the dataset's
    owner: the folder's name, each image and why, and no absolute path of the machine it ran on."""
    from core.data import TrainDataset

    data = images(tmp_path / "ds-123", (128, 128))
    with pytest.raises(DatasetError) as e:
        TrainDataset(data, resolution=512, min_side=256)
    assert str(e.value).startswith("ds-123: no usable images (2 image file(s) found)")
    assert "0.png: 128x128: shortest side under 256 px" in str(e.value) and str(tmp_path) not in str(e.value)
