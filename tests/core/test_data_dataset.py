"""TrainDataset and BucketBatchSampler: pixels, captions, buckets, augmentation, exact resume.

.venv/bin/python -m pytest tests/core/test_data_dataset.py -q
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from core.data import BucketBatchSampler, TrainDataset, collate_batch, make_buckets, nearest_bucket
from core.data.images import load_rgb, probe
from core.data.transforms import with_trigger


def save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def halves(size, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: shows orientation and flips."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


@pytest.fixture
def mixed(tmp_path):
    """Nine images of three aspect ratios, some captioned."""
    d = tmp_path / "mixed"
    d.mkdir()
    sizes = [(300, 200), (200, 300), (256, 256)]
    for i in range(9):
        w, h = sizes[i % 3]
        (d / f"img{i}.png").write_bytes(save(halves((w, h))))
        if i % 2 == 0:
            (d / f"img{i}.txt").write_text(f"picture number {i}")
    return d


def test_exif_rotation_is_applied(tmp_path):
    img = halves((60, 40))  # stored landscape, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_rgb(save(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 60)
    r, g, b = out.getpixel((20, 5))  # the stored left edge is now the top
    assert r > 200 and b < 60
    r, g, b = out.getpixel((20, 55))
    assert b > 200 and r < 60
    (tmp_path / "rot.jpg").write_bytes(save(halves((300, 200)), "JPEG", exif=exif.tobytes(), quality=95))
    ds = TrainDataset(tmp_path, resolution=128, min_side=64)
    assert ds.report.sizes["min"] == [200, 300] and ds.bucket(0) == (96, 160)  # portrait bucket
    x = ds[0]["image"]
    assert x[0, 5, 48] > 0.8 and x[2, -5, 48] > 0.8  # red on top, blue below


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
    img.paste((0, 128, 0, 255), (0, 0, 32, 64))  # opaque green left half
    out = load_rgb(save(img))
    assert out.mode == "RGB"
    assert out.getpixel((48, 10)) == (255, 255, 255)
    assert out.getpixel((10, 10)) == (0, 128, 0)
    pal = img.convert("P")  # palette + transparency index
    pal.info["transparency"] = pal.getpixel((48, 10))
    assert load_rgb(save(pal)).getpixel((48, 10)) == (255, 255, 255)


def test_phone_mpo_jpeg_counts_as_jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(
        buf, format="MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), (0, 255, 0))]
    )
    assert probe(buf.getvalue()).format == "JPEG"
    assert load_rgb(buf.getvalue()).getpixel((5, 5))[0] > 240  # the first (primary) frame


def test_16_bit_greyscale_keeps_its_tones():
    ramp = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))  # 0 .. 65520
    out = np.asarray(load_rgb(save(ramp)))
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1, 0] == 255
    assert 120 < out[32, 0, 0] < 135  # mid-grey stays mid-grey


@pytest.mark.parametrize("res", [128, 256, 512, 1024])
def test_buckets_are_multiples_of_32_with_area_near_res_squared(res):
    buckets = make_buckets(res)
    assert (res, res) in buckets
    for w, h in buckets:
        assert w % 32 == 0 and h % 32 == 0
        assert max(w / h, h / w) <= 3.0
        assert abs(w * h / res**2 - 1) < (0.07 if res >= 256 else 0.1)
    assert set(buckets) == {(h, w) for w, h in buckets}  # symmetric
    assert nearest_bucket(4000, 3000, make_buckets(1024)) == (1184, 896)  # 4:3 -> 1.32


def test_items_keep_aspect_and_range_and_batch_by_bucket(mixed):
    ds = TrainDataset(mixed, resolution=128, trigger="tok", min_side=64)
    assert len(ds) == 9 and ds.report.usable == 9
    for k in range(9):
        item = ds[k]
        x = item["image"]
        c, h, w = x.shape
        assert c == 3 and h % 32 == 0 and w % 32 == 0
        assert abs(h * w / 128**2 - 1) < 0.1
        src_w, src_h = Image.open(mixed / item["name"]).size
        assert (w > h) == (src_w > src_h) and (w == h) == (src_w == src_h)
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
        assert x[0, h // 2, 2] > 0.9 and x[2, h // 2, 2] < -0.9  # red stays on the left (no flip)
    captions = {ds[k]["name"]: ds[k]["caption"] for k in range(9)}
    assert captions["img0.png"] == "tok, picture number 0"
    assert captions["img1.png"] == "tok"  # no caption -> trigger alone
    sampler = BucketBatchSampler(ds, batch_size=3, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch)
    seen = []
    for batch in loader:
        assert batch["images"].shape[0] == 3  # 3 images per aspect -> full batches
        seen += batch["names"]
    assert sorted(seen) == sorted(f"img{i}.png" for i in range(9))


def test_caption_dropout_and_flip_are_deterministic_per_key(mixed):
    ds = TrainDataset(
        mixed, resolution=128, trigger="tok", min_side=64, flip=True, caption_dropout=0.3, repeats=40, seed=3
    )
    caps = [ds.caption(k) for k in range(len(ds))]
    frac = sum(c == " " for c in caps) / len(caps)
    assert 0.2 < frac < 0.4
    again = TrainDataset(
        mixed, resolution=128, trigger="tok", min_side=64, flip=True, caption_dropout=0.3, repeats=40, seed=3
    )
    assert caps == [again.caption(k) for k in range(len(ds))]
    flips = [bool(ds[k]["image"][0, 60, 2] < 0) for k in range(0, 60)]  # red moved off the left edge
    assert 15 < sum(flips) < 45
    assert flips == [bool(ds[k]["image"][0, 60, 2] < 0) for k in range(0, 60)]


def test_images_whose_captions_name_a_side_are_never_flipped(mixed):
    (mixed / "img0.txt").write_text("a dog on the Left")
    assert not TrainDataset(mixed, resolution=128, min_side=64).report.warnings[-1].startswith("flip")
    ds = TrainDataset(mixed, resolution=128, min_side=64, flip=True, repeats=40, seed=3)
    warning = ds.report.warnings[-1]
    assert warning.startswith("flip is on but 1 caption(s) say left or right (e.g. img0.png)")
    assert warning.endswith("those images are not flipped")
    keys = range(len(ds))
    flipped = {ds.records[k % len(ds.records)].name for k in keys if ds._draws(k)[1]}
    assert "img0.png" not in flipped and len(flipped) == len(ds.records) - 1  # every other image still flips
    img0 = next(k for k in keys if ds[k]["name"] == "img0.png")
    plain = TrainDataset(mixed, resolution=128, min_side=64)
    assert torch.equal(ds[img0]["image"], plain[img0 % len(plain)]["image"])  # as it is, every epoch


def test_sampler_resume_equals_uninterrupted_order(mixed):
    ds = TrainDataset(mixed, resolution=128, min_side=64, repeats=3)  # 27 keys
    full = []
    s = BucketBatchSampler(ds, batch_size=2, seed=7)
    for _ in range(3):
        full += list(s)
    per_epoch = len(s)
    assert per_epoch == 15  # 9 per bucket -> 5 batches each
    for epoch in range(3):
        keys = sorted(k for b in full[epoch * per_epoch : (epoch + 1) * per_epoch] for k in b)
        assert keys == [epoch * 27 + j for j in range(27)]  # each key once per epoch
    assert full[:per_epoch] != full[per_epoch : 2 * per_epoch]  # epochs are reshuffled
    for b in full:
        assert len({ds.bucket(k) for k in b}) == 1
    for cut in (0, 4, 15, 22):
        first = BucketBatchSampler(ds, batch_size=2, seed=7)
        got = []
        while len(got) < cut:
            for b in first:
                got.append(b)
                if len(got) == cut:
                    break
        state = first.state_after(cut)
        resumed = BucketBatchSampler(ds, batch_size=2, seed=7)
        resumed.load_state_dict(state)
        while len(got) < len(full):
            got += list(resumed)
        assert got == full, f"resume after {cut} batches diverged"
    with pytest.raises(ValueError, match="batch_size was 2, now 3"):
        BucketBatchSampler(ds, batch_size=3, seed=7).load_state_dict(state)


def test_sampler_ranks_split_each_epoch(mixed):
    ds = TrainDataset(mixed, resolution=128, min_side=64, repeats=2)
    ranks = [BucketBatchSampler(ds, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) > 0
    assert not {k for x in a for k in x} & {k for x in b for k in x}


def _take(sampler, n: int) -> list:
    """The next n batches of a sampler, across epoch ends (as the trainer's loader loop pulls them)."""
    got = []
    while len(got) < n:
        for b in sampler:
            got.append(b)
            if len(got) == n:
                break
    return got


def test_sampler_resume_on_another_number_of_ranks_keeps_the_data_position(mixed):
    """2 ranks -> 1 -> 2: the batches used are the shared epoch order without a batch repeated or skipped,
    except the few an epoch dealt to 2 ranks leaves over (an odd count), as an uninterrupted 2-rank run does."""
    ds = TrainDataset(mixed, resolution=128, min_side=64, repeats=3)  # 27 keys, 15 batches of 2 per epoch
    one = BucketBatchSampler(ds, batch_size=2, seed=7)
    shared = [one._epoch_order(e) for e in range(4)]
    assert len(shared[0]) == 15

    two = [BucketBatchSampler(ds, batch_size=2, seed=7, rank=r, world_size=2) for r in range(2)]
    first = [_take(s, 5) for s in two]  # 5 steps on 2 ranks: shared batches 0..9 of epoch 0
    assert first[0] == shared[0][0:10:2] and first[1] == shared[0][1:10:2]
    state = two[0].state_after(5)
    assert (state["epoch"], state["consumed"], state["world_size"]) == (0, 10, 2)

    alone = BucketBatchSampler(ds, batch_size=2, seed=7)
    alone.load_state_dict(state)
    second = _take(alone, 9)  # the 5 left of epoch 0 (all of them: one rank skips none), then 4 of epoch 1
    assert second == shared[0][10:15] + shared[1][0:4]
    state = alone.state_after(5 + 9)  # the trainer's count goes on across the resume
    assert (state["epoch"], state["consumed"], state["world_size"]) == (1, 4, 1)

    again = [BucketBatchSampler(ds, batch_size=2, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in again:
        s.load_state_dict(state)
    third = [_take(s, 6) for s in again]  # 11 left in epoch 1: 5 each (one skipped), then 1 each of epoch 2
    assert third[0] == shared[1][4:14:2] + [shared[2][0]]
    assert third[1] == shared[1][5:14:2] + [shared[2][1]]
    # the saved state after those goes on from the same place, whichever rank writes it
    end = again[0].state_after(14 + 6)
    assert end == again[1].state_after(14 + 6) and (end["epoch"], end["consumed"]) == (2, 2)
    with pytest.raises(ValueError, match="shared_batches_per_epoch was 15, now 12"):
        BucketBatchSampler(ds, batch_size=2, seed=7, drop_last=True).load_state_dict(state)


def test_zip_dataset_in_worker_processes_matches_main_process(tmp_path):
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(4):
            zf.writestr(f"{i}.jpg", save(halves((160, 96), left=(40 * i, 200, 0)), "JPEG"))
            zf.writestr(f"{i}.txt", f"photo {i}")
    ds = TrainDataset(z, resolution=96, min_side=64, trigger="zz", cache=True)
    sampler = BucketBatchSampler(ds, batch_size=2, seed=0)
    order = sampler.epoch_batches(0)
    main = [collate_batch([ds[k] for k in b]) for b in order]
    loader = DataLoader(
        ds, batch_sampler=BucketBatchSampler(ds, batch_size=2, seed=0), collate_fn=collate_batch, num_workers=2
    )
    for want, got in zip(main, loader):
        assert got["captions"] == want["captions"]
        assert torch.equal(got["images"], want["images"])
    assert main[0]["images"].shape == (2, 3, 64, 128)  # 5:3 photos -> the 2:1 bucket at 96 px
    assert main[0]["captions"][0].startswith("zz, photo ")


def test_bad_arguments_are_named(mixed):
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        TrainDataset(mixed, resolution=128, min_side=64, repeats=0)
    with pytest.raises(ValueError, match=r"caption_dropout must be in \[0, 1\]"):
        TrainDataset(mixed, resolution=128, min_side=64, caption_dropout=1.5)
    ds = TrainDataset(mixed, resolution=128, min_side=64)
    with pytest.raises(ValueError, match="no full batch of 4"):
        BucketBatchSampler(ds, batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="batch_size must be"):
        BucketBatchSampler(ds, batch_size=0)


def test_trigger_is_prepended_once_and_dropout_trains_on_the_empty_prompt():
    assert with_trigger("a red cube", "sks style") == "sks style, a red cube"
    assert with_trigger("SKS Style, a red cube", "sks style") == "SKS Style, a red cube"  # already there
    assert with_trigger("a category of things", "cat") == "cat, a category of things"  # a word, not a part
    assert with_trigger(None, "  sks   style ") == "sks style"
    assert with_trigger(None, "") == " " and with_trigger("a dog", "") == "a dog"
