"""Synthetic shape scenes: captions, determinism, the style score and the prompt-following measure.

.venv/bin/python -m pytest tests/core/test_synth.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageFilter

from core.data import with_trigger
from core.synth import REGIONS, Scene, ShapeSpec, SynthDataset, prompt_following, render, sample_scene, style_score
from core.synth.cli import write_dataset
from core.synth.evaluate import evaluate, evaluate_folder
from core.synth.scene import parse_caption
from core.synth.vocab import REGION_PHRASES

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def degrade(img: Image.Image, rng: np.random.Generator, blur: float = 1.0, noise: float = 12.0) -> Image.Image:
    """What a generator's output looks like next to a clean render: softer edges and pixel noise."""
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    return Image.fromarray((arr + rng.normal(0, noise, arr.shape)).clip(0, 255).astype(np.uint8))


def test_caption_reads_the_labels():
    scene = Scene((ShapeSpec("circle", "red", "small", "top left"),), "light blue")
    assert scene.caption() == "a small red circle in the top left on a light blue background"
    two = Scene(
        (ShapeSpec("star", "blue", "large", "centre"), ShapeSpec("ring", "green", "small", "bottom")), "white"
    )
    assert two.caption("hatchwork style") == (
        "hatchwork style, a large blue star in the centre and a small green "
        "ring at the bottom, on a white background"
    )
    for i in range(300):
        s = sample_scene(5, i)
        cap, lab = s.caption(), s.labels()
        assert cap.endswith(f"on a {lab['background']} background")
        for sh in lab["shapes"]:
            assert f"a {sh['size']} {sh['colour']} {sh['shape']} {REGION_PHRASES[sh['region']]}" in cap
        assert len({sh["region"] for sh in lab["shapes"]}) == len(lab["shapes"])
        assert len({sh["colour"] for sh in lab["shapes"]}) == len(lab["shapes"])
        assert parse_caption(s.caption("sks style")) == lab  # a prompt alone can be scored
    with pytest.raises(ValueError, match="not a shape-scene caption"):
        parse_caption("a photo of a dog")


def test_scenes_cover_the_vocabulary_and_are_deterministic():
    scenes = [sample_scene(0, i) for i in range(400)]
    assert scenes == [sample_scene(0, i) for i in range(400)]
    assert scenes != [sample_scene(1, i) for i in range(400)]
    assert {s.region for sc in scenes for s in sc.shapes} == set(REGIONS)
    assert 0.35 < np.mean([len(sc.shapes) == 2 for sc in scenes]) < 0.65
    a, b = render(scenes[7], 128, "hatched"), render(sample_scene(0, 7), 128, "hatched")
    assert a.tobytes() == b.tobytes()
    ds1, ds2 = SynthDataset(n=10, size=128, seed=4), SynthDataset(n=10, size=128, seed=4)
    assert ds1[123]["caption"] == ds2[123]["caption"] and (ds1[123]["image"] == ds2[123]["image"]).all()


def test_cli_output_is_identical_across_processes_and_accepted_by_the_dataset(tmp_path):
    from core.data import TrainDataset, validate_dataset

    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "core.synth",
                "--out",
                str(out),
                "--n",
                "12",
                "--size",
                "128",
                "--style",
                "hatched",
                "--trigger",
                "hatchwork style",
                "--zip",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        outs.append(out.with_name(out.name + ".zip"))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    report = validate_dataset(outs[0], resolution=128, min_side=128)
    # 12 styled scenes and, by default for a styled set, 12 plain regularisation scenes under reg/
    assert (report.usable, report.captioned, report.unsupported, report.caption_issues) == (24, 24, [], [])
    ds = TrainDataset(outs[0], resolution=128, min_side=128, trigger="hatchwork style")
    item = ds[0]
    assert item["image"].shape == (3, 128, 128)
    assert item["caption"].startswith("hatchwork style, a ") and item["caption"].count("hatchwork style") == 1
    folder = tmp_path / "plain"
    r = subprocess.run(
        [sys.executable, "-m", "core.synth", "--out", str(folder), "--n", "3", "--size", "100"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--size must be a multiple of 32" in r.stderr and not folder.exists()


def test_style_score_separates_hatched_from_plain_by_a_wide_margin():
    rng = np.random.default_rng(0)
    for size in (128, 256):
        plain = [style_score(render(sample_scene(9, i), size, "plain")) for i in range(40)]
        hatched = [style_score(render(sample_scene(9, i), size, "hatched")) for i in range(40)]
        assert max(plain) < 0.15 and min(hatched) > 0.8, (size, max(plain), min(hatched))
    # Generated images are softer and noisier: the margin must survive that at 128 px.
    plain = [style_score(degrade(render(sample_scene(9, i), 128, "plain"), rng)) for i in range(40)]
    hatched = [style_score(degrade(render(sample_scene(9, i), 128, "hatched"), rng)) for i in range(40)]
    assert max(plain) < 0.15 and min(hatched) > 0.5, (max(plain), min(hatched))


@pytest.mark.parametrize("style", ["plain", "hatched"])
def test_prompt_following_recovers_the_labels_of_renders(style):
    rng = np.random.default_rng(1)
    clean, noisy, wrong = [], [], []
    for i in range(80):
        scene = sample_scene(11, i)
        img = render(scene, 128, style)
        m = prompt_following(img, scene)
        clean.append(m["score"])
        assert m["extra_regions"] == []
        noisy.append(prompt_following(degrade(img, rng), scene)["score"])
        wrong.append(prompt_following(img, sample_scene(12, i))["score"])  # someone else's prompt
    assert np.mean(clean) >= 0.99
    assert np.mean(noisy) >= 0.95
    assert np.mean(wrong) < 0.3  # the measure is not satisfied by any image


def test_measure_names_what_is_wrong():
    scene = Scene((ShapeSpec("triangle", "yellow", "large", "top right"),), "light grey")
    img = render(Scene((ShapeSpec("ring", "blue", "large", "bottom left"),), "white"), 128)
    m = prompt_following(img, scene)
    assert m["background"] == {"expected": "light grey", "found": "white"}
    assert m["shapes"][0]["present"] is False and m["extra_regions"] == ["bottom left"]
    moved = render(Scene((ShapeSpec("ring", "blue", "large", "top right"),), "light grey"), 128)
    row = prompt_following(moved, scene)["shapes"][0]
    assert row["present"] and row["found"]["colour"] == "blue" and row["found"]["shape"] == "ring"
    assert not row["colour_ok"] and not row["shape_ok"]


def test_rendering_is_cheap_enough_for_on_the_fly_pretraining():
    scenes = [sample_scene(3, i) for i in range(200)]
    t = time.perf_counter()
    for s in scenes:
        render(s, 128, "hatched")
    per_image = (time.perf_counter() - t) / len(scenes)
    assert per_image < 0.015, f"{per_image * 1e3:.1f} ms per 128-px image"  # ~1.5 ms measured alone


def test_synth_dataset_batches_with_the_bucket_sampler():
    from core.data import BucketBatchSampler, collate_batch

    ds = SynthDataset(n=8, size=128, seed=0, style="hatched", trigger="hw")
    sampler = BucketBatchSampler(ds, batch_size=4, seed=0)
    batches = [collate_batch([ds[k] for k in b]) for b in sampler]
    assert len(batches) == 2 and batches[0]["images"].shape == (4, 3, 128, 128)
    assert all(c.startswith("hw, a ") for b in batches for c in b["captions"])
    nxt = next(iter(sampler))  # the next epoch draws new scenes, not the same eight again
    assert min(nxt) >= 8
    with pytest.raises(ValueError, match="multiple of 32"):
        SynthDataset(size=100)
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        ShapeSpec("circle", "teal", "small", "centre")
    with pytest.raises(ValueError, match="distinct regions"):
        Scene(
            (ShapeSpec("circle", "red", "small", "centre"), ShapeSpec("star", "blue", "small", "centre")), "white"
        )


def test_evaluate_folder_scores_renders_and_catches_a_wrong_style(tmp_path):
    from core.synth.cli import write_dataset

    folder = write_dataset(tmp_path / "h", n=20, size=128, seed=2, style="hatched", trigger="hw")
    out = evaluate_folder(folder)
    assert out["n"] == 20 and out["mean_follow_score"] >= 0.99 and out["mean_style_score"] > 0.8
    assert out["rows"][0]["file_name"] == "000000.png"
    plain = evaluate(
        [(render(sample_scene(2, i), 128, "plain"), sample_scene(2, i).caption("hw")) for i in range(20)]
    )
    assert plain["mean_follow_score"] >= 0.99 and plain["mean_style_score"] < 0.1
    with pytest.raises(FileExistsError):
        write_dataset(folder, n=1)


def test_synth_dataset_mixed_sizes_keep_their_bucket_across_epochs():
    from core.data import BucketBatchSampler, collate_batch

    ds = SynthDataset(n=12, sizes=(128, 192), seed=1)
    assert {ds.bucket(k) for k in range(12)} == {(128, 128), (192, 192)}
    sampler = BucketBatchSampler(ds, batch_size=3, seed=0)
    for epoch in range(2):
        for b in sampler:
            batch = collate_batch([ds[k] for k in b])  # raises if a batch mixed sizes
            assert batch["images"].shape[-1] == ds.bucket(b[0])[0] == ds.bucket(b[0] % 12)[0]


def test_outlined_style_scores_high_and_plain_or_darkened_shapes_zero():
    from core.synth.outline import outline_score

    scenes = [sample_scene(5, i) for i in range(20)]
    for size in (128, 256):
        outlined = [outline_score(render(s, size, "outlined")) for s in scenes]
        plain = [outline_score(render(s, size, "plain")) for s in scenes]
        assert sum(outlined) / len(outlined) >= 0.8
        assert max(plain) == 0.0
    # Shapes merely darkened (what a LoRA that learned "darker" rather than "outlined" draws) score ~0.
    arr = np.asarray(render(scenes[3], 128)).astype(np.float32)
    fg = np.linalg.norm(arr - arr[0, 0], axis=-1) > 60
    arr[fg] *= 0.3
    assert outline_score(Image.fromarray(arr.astype(np.uint8))) < 0.1


def test_outlined_renders_keep_their_content():
    from core.synth import prompt_following

    for i in range(20):
        s = sample_scene(6, i)
        m = prompt_following(render(s, 128, "outlined"), s)
        assert m["score"] == 1.0, (s, m)


def test_shaded_style_scores_high_and_plain_darkened_or_outlined_shapes_do_not():
    from core.synth.shading import shading_score

    scenes = [sample_scene(5, i) for i in range(20)]
    for size in (128, 256):
        shaded = [shading_score(render(s, size, "shaded")) for s in scenes]
        assert sum(shaded) / len(shaded) >= 0.9
        assert max(shading_score(render(s, size, "plain")) for s in scenes) < 0.05
        assert sum(shading_score(render(s, size, "outlined")) for s in scenes) / len(scenes) < 0.1
    # Shapes merely darkened all over (a LoRA that learned "darker", not "lit from above") score ~0.
    arr = np.asarray(render(scenes[3], 128)).astype(np.float32)
    fg = np.linalg.norm(arr - arr[0, 0], axis=-1) > 60
    arr[fg] *= 0.5
    assert shading_score(Image.fromarray(arr.astype(np.uint8))) < 0.05


def test_shaded_renders_keep_their_content_colour_names_included():
    from core.synth import prompt_following

    for i in range(30):
        s = sample_scene(6, i, two_shape_prob=0.5)
        m = prompt_following(render(s, 128, "shaded"), s)
        assert m["score"] == 1.0, (s, m)


def test_reg_images_train_without_the_trigger(tmp_path):
    from core.data import TrainDataset
    from core.synth.cli import write_dataset

    data = write_dataset(tmp_path / "d", 3, 128, style="outlined", reg=2)
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    assert names == ["000000.png", "000001.png", "000002.png", "reg/000000.png", "reg/000001.png"]
    ds = TrainDataset(data, resolution=128, trigger="sks", min_side=128)
    captions = {ds.records[k].name: ds.caption(k) for k in range(len(ds.records))}
    assert all(c.startswith("sks, ") for n, c in captions.items() if not n.startswith("reg/"))
    assert all("sks" not in c and c.startswith("a ") for n, c in captions.items() if n.startswith("reg/"))


def test_paired_reg_images_are_the_styled_scenes_drawn_plain(tmp_path):
    """reg_paired: each styled image has a plain twin under reg/ (same scene, caption without the trigger), so
    the only thing that tells them apart is the style and the trigger; reg/ images past the styled ones are
    other scenes."""
    from core.synth.cli import write_dataset

    data = write_dataset(tmp_path / "d", 2, 128, style="shaded", trigger="in shaded style", reg=3, reg_paired=True)
    rows = {r["file_name"]: r for r in map(json.loads, (data / "metadata.jsonl").read_text().splitlines())}
    for i in range(2):
        styled, twin = rows[f"{i:06d}.png"], rows[f"reg/{i:06d}.png"]
        assert styled["labels"] == twin["labels"] and styled["text"] == "in shaded style, " + twin["text"]
        plain = np.asarray(render(sample_scene(0, i, 0.5), 128))  # stream 0: write_dataset's default seed
        assert np.array_equal(np.asarray(Image.open(data / f"reg/{i:06d}.png").convert("RGB")), plain)
        assert not np.array_equal(np.asarray(Image.open(data / f"{i:06d}.png").convert("RGB")), plain)
    assert rows["reg/000002.png"]["labels"] == sample_scene(100_000, 2, 0.5).labels()
    unpaired = write_dataset(tmp_path / "u", 2, 128, style="shaded", trigger="x", reg=2)
    first = json.loads((unpaired / "metadata.jsonl").read_text().splitlines()[2])
    assert first["labels"] == sample_scene(100_000, 0, 0.5).labels()


def test_a_trigger_can_go_after_the_scene_and_the_trainer_keeps_it_there(tmp_path):
    """The bundled model reads the scene sentence by token position: `at="end"` leaves that sentence as pretrained,
    and core.data's with_trigger does not prepend a trigger that a caption already holds."""
    scene = Scene((ShapeSpec("circle", "red", "small", "top left"),), "light blue")
    assert scene.caption("in bold outline style", at="end") == (
        "a small red circle in the top left on a light blue background, in bold outline style"
    )
    with pytest.raises(ValueError, match="at must be one of"):
        scene.caption("x", at="middle")
    data = write_dataset(tmp_path / "d", 2, 128, style="outlined", trigger="outlined", trigger_at="end", reg=1)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"].endswith(", outlined") for r in rows] == [True, True, False]  # reg/ has no trigger
    assert with_trigger(rows[0]["text"], "outlined") == rows[0]["text"]
    assert parse_caption(rows[0]["text"]) == rows[0]["labels"]
