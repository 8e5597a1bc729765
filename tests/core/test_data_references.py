"""Edit / personalisation datasets: metadata.jsonl "references" and musubi-tuner's control folder, every missing
or bad reference named in the report, references kept out of the targets, buckets from the target, and the
dataset handing each sample's references over (mirrored with a flipped target, dropped out on request)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.data import DatasetError, TrainDataset, collate_batch, validate_dataset


def save(path, size=(96, 64), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    img.paste((255, 255, 255), (0, 0, size[0] // 4, size[1]))  # a white band on the left: shows a flip
    img.save(path)


def test_metadata_references_validated_and_named(tmp_path):
    save(tmp_path / "out1.png", (192, 128))
    save(tmp_path / "out2.png", (128, 192))
    save(tmp_path / "out3.png")
    save(tmp_path / "in1.png", (80, 80), (0, 0, 200))
    save(tmp_path / "in2.png", (64, 64), (0, 200, 0))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        {"file": "out1.png", "text": "make the shape blue", "references": ["in1.png"]},
        {"file_name": "out2.png", "text": "two refs", "references": ["in1.png", "in2.png"]},
        {"file": "out3.png", "text": "bad", "references": ["missing.png", "broken.png"]},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    report = validate_dataset(tmp_path, resolution=64, min_side=32)
    assert report.usable == 2 and report.with_references == 2  # in*.png are references, not targets
    assert report.images == 3
    [bad] = report.bad_references
    assert bad.name == "out3.png"
    assert (
        "reference missing.png: not in the dataset" in bad.reason
        and "reference broken.png: not a readable" in bad.reason
    )
    assert "bad references" in report.problems_text()
    with pytest.raises(DatasetError, match="out3.png"):
        validate_dataset(tmp_path, resolution=64, min_side=32, strict=True)
    ds = TrainDataset(tmp_path, resolution=128, min_side=32)
    items = {ds[k]["name"]: ds[k] for k in range(len(ds))}
    assert [r.size for r in items["out2.png"]["references"]] == [(80, 80), (64, 64)]  # in order, own size
    h1, w1 = items["out1.png"]["image"].shape[1:]
    h2, w2 = items["out2.png"]["image"].shape[1:]
    assert w1 > h1 and h2 > w2  # each bucketed by its target's aspect (the references are square)
    batch = collate_batch([items["out1.png"]])
    assert batch["captions"] == ["make the shape blue"] and len(batch["references"][0]) == 1


def test_musubi_control_folder_single_and_numbered(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("make the shape blue")
    (tmp_path / "b.txt").write_text("combine them")
    save(tmp_path / "control" / "a.png", color=(0, 0, 200))
    save(tmp_path / "control" / "b_1.png", color=(0, 200, 0))
    save(tmp_path / "control" / "b_0.png", color=(0, 0, 200))
    save(tmp_path / "control" / "orphan.png")
    report = validate_dataset(tmp_path, resolution=64, min_side=32)
    assert (report.usable, report.with_references) == (2, 2)
    assert any(i.name == "control/orphan.png" and "no target" in i.reason for i in report.caption_issues)
    ds = TrainDataset(tmp_path, resolution=64, min_side=32)
    refs = {ds.records[k].name: ds.records[k].references for k in range(len(ds.records))}
    assert refs == {"a.png": ("control/a.png",), "b.png": ("control/b_0.png", "control/b_1.png")}


def test_flip_mirrors_references_and_dropout_drops_them(tmp_path):
    save(tmp_path / "out.png")
    save(tmp_path / "in.png", (96, 64), (0, 0, 200))
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file": "out.png", "text": "t", "references": ["in.png"]})
    )
    ds = TrainDataset(tmp_path, resolution=64, min_side=32, flip=True, repeats=40)
    for k in range(len(ds)):
        item = ds[k]
        ref = np.asarray(item["references"][0])
        target_left_white = bool(item["image"][:, :, 0].min() > 0.9)
        assert target_left_white == bool(ref[:, 0].min() == 255)  # the pair is mirrored together
    drop = TrainDataset(tmp_path, resolution=64, min_side=32, repeats=200, reference_dropout=0.3)
    dropped = sum(not drop[k]["references"] for k in range(len(drop)))
    assert 30 < dropped < 90 and dropped == sum(drop.references_dropped(k) for k in range(len(drop)))
    with pytest.raises(ValueError, match="reference_dropout"):
        TrainDataset(tmp_path, resolution=64, min_side=32, reference_dropout=1.5)
