"""Dataset sources and validation: folders, zips, metadata.jsonl, unsafe archives, bombs, bad files.

.venv/bin/python -m pytest tests/core/test_data_sources.py -q
"""

from __future__ import annotations

import io
import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import DatasetError, SourceLimits, validate_dataset


def png_bytes(size=(96, 64), color=(200, 30, 30), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose IHDR claims width x height; decoding it would need width*height*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def tree_snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_folder_with_txt_captions_reports_counts_sizes_and_missing(tmp_path):
    d = tmp_path / "ds"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(png_bytes((96, 64)))
    (d / "a.txt").write_text("a red  square\n on white", encoding="utf-8")
    (d / "sub" / "b.jpg").write_bytes(png_bytes((64, 128), fmt="JPEG"))
    (d / "sub" / "b.txt").write_text("\ufeffa tall photo", encoding="utf-8")
    (d / "c.webp").write_bytes(png_bytes((80, 80), fmt="WEBP"))  # no caption
    (d / "notes.md").write_text("hello")  # unsupported
    (d / "anim.gif").write_bytes(png_bytes(fmt="GIF"))  # unsupported format
    (d / "orphan.txt").write_text("nobody's caption")
    (d / ".DS_Store").write_bytes(b"\x00\x01")  # OS litter: ignored silently
    r = validate_dataset(d, resolution=64, min_side=32)
    assert (r.images, r.usable, r.captioned) == (3, 3, 2)
    assert r.missing_captions == ["c.webp"]
    assert sorted(i.name for i in r.unsupported) == ["anim.gif", "notes.md"]
    assert [i.name for i in r.caption_issues] == ["orphan.txt"]
    assert r.ignored == [".DS_Store"]
    assert r.sizes["min"] == [96, 64] and r.sizes["max"] == [64, 128] and r.sizes["median"] == [80, 80]
    assert sum(r.buckets.values()) == 3
    json.dumps(r.to_dict())  # the API returns it as is
    assert r.to_dict()["ok"] is True


def test_zip_with_metadata_jsonl_is_read_in_place(tmp_path, monkeypatch):
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("imgs/1.png", png_bytes())
        zf.writestr("imgs/2.png", png_bytes(color=(0, 0, 255)))
        zf.writestr(
            "imgs/metadata.jsonl",
            "\n".join(
                [
                    json.dumps({"file_name": "1.png", "text": "a red thing"}),
                    json.dumps({"file_name": "2.png", "text": "a blue thing"}),
                    json.dumps({"file_name": "3.png", "text": "not in the zip"}),
                    "{not json",
                ]
            ),
        )
        zf.writestr("__MACOSX/imgs/._1.png", b"junk")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree_snapshot(tmp_path)
    r = validate_dataset(z, resolution=64, min_side=32)
    assert (r.usable, r.captioned) == (2, 2)
    reasons = {(i.name, i.reason.split(":")[0]) for i in r.caption_issues}
    assert ("imgs/3.png", "listed in metadata.jsonl but no such image in the dataset") in reasons
    assert ("imgs/metadata.jsonl", "line 4") in reasons
    assert tree_snapshot(tmp_path) == before  # nothing extracted anywhere


@pytest.mark.parametrize(
    "bad_name,reason",
    [
        ("../evil.png", "'..'"),
        ("/abs/evil.png", "absolute"),
        ("ok/../../evil.png", "'..'"),
        ("C:/evil.png", "absolute"),
    ],
)
def test_zip_with_escaping_paths_is_refused_naming_the_entry(tmp_path, monkeypatch, bad_name, reason):
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good.png", png_bytes())
        zf.writestr(bad_name, png_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree_snapshot(tmp_path)
    with pytest.raises(DatasetError) as e:
        validate_dataset(z, resolution=64, min_side=32)
    assert bad_name in str(e.value) and reason in str(e.value)
    assert [i.name for i in e.value.report.unsafe] == [bad_name]
    assert e.value.report.to_dict()["ok"] is False
    assert tree_snapshot(tmp_path) == before


def test_corrupt_zip_entry_is_reported_by_name(tmp_path):
    z = tmp_path / "ds.zip"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.png", png_bytes())
        zf.writestr("bad.png", buf.getvalue())
        zf.writestr("bad.txt", "a caption " * 50)
    raw = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        for info in zf.infolist():
            if info.filename.startswith("bad"):  # flip bytes in the middle of the entry's compressed data
                at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
                raw[at : at + 4] = bytes(b ^ 0xFF for b in raw[at : at + 4])
    z.write_bytes(bytes(raw))
    r = validate_dataset(z, resolution=64, min_side=32)
    assert r.usable == 1 and [i.name for i in r.unreadable] == ["bad.png"]
    assert "corrupt zip entry" in r.unreadable[0].reason
    assert [i.name for i in r.caption_issues] == ["bad.txt"]


def test_zip_with_symlink_is_refused(tmp_path):
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good.png", png_bytes())
        link = zipfile.ZipInfo("passwd.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match=r"passwd\.png: symbolic link"):
        validate_dataset(z, resolution=64, min_side=32)


def test_zip_over_size_or_count_limits_is_refused_before_reading(tmp_path):
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\x00" * 200_000)  # compresses to a few hundred bytes
        zf.writestr("a.png", png_bytes())
    with pytest.raises(DatasetError, match="more than the limit of 100000"):
        validate_dataset(z, resolution=64, min_side=32, limits=SourceLimits(max_total_bytes=100_000))
    with pytest.raises(DatasetError, match="2 entries, more than the limit of 1"):
        validate_dataset(z, resolution=64, min_side=32, limits=SourceLimits(max_entries=1))


def test_folder_symlink_outside_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes())
    (d / "link.png").symlink_to(secret)
    with pytest.raises(DatasetError, match="link.png: symlink pointing outside"):
        validate_dataset(d, resolution=64, min_side=32)


def test_decompression_bomb_png_is_rejected_by_name_without_decoding(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "ok.png").write_bytes(png_bytes())
    (d / "bomb500mp.png").write_bytes(bomb_png(25_000, 20_000))  # 500 MP (over Pillow's own error limit)
    (d / "bomb80mp.png").write_bytes(bomb_png(10_000, 8_000))  # 80 MP (only over our 64 MP limit)
    assert (d / "bomb500mp.png").stat().st_size < 200
    r = validate_dataset(d, resolution=64, min_side=32)
    assert r.usable == 1
    assert sorted(i.name for i in r.huge) == ["bomb500mp.png", "bomb80mp.png"]
    assert "10000x8000 = 80 MP is over the limit of 64 MP" in {i.name: i.reason for i in r.huge}["bomb80mp.png"]


def test_empty_and_all_corrupt_datasets_raise_naming_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no usable images .0 image file.s. found"):
        validate_dataset(empty, resolution=64, min_side=32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "noise.png").write_bytes(b"this is not a png at all")
    (bad / "cut.jpg").write_bytes(png_bytes((200, 200), fmt="JPEG")[:300])  # truncated
    (bad / "tiny.png").write_bytes(png_bytes((20, 20)))
    with pytest.raises(DatasetError) as e:
        validate_dataset(bad, resolution=64, min_side=32)
    msg = str(e.value)
    assert "noise.png" in msg and "cut.jpg" in msg and "tiny.png: 20x20: shortest side under 32 px" in msg
    assert sorted(i.name for i in e.value.report.unreadable) == ["cut.jpg", "noise.png"]


def test_strict_rejects_any_bad_file_and_bad_arguments_are_named(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes())
    (d / "b.png").write_bytes(b"garbage")
    assert validate_dataset(d, resolution=64, min_side=32).usable == 1
    with pytest.raises(DatasetError, match="1 file.s. rejected.*b.png"):
        validate_dataset(d, resolution=64, min_side=32, strict=True)
    with pytest.raises(ValueError, match="resolution must be an integer >= 32"):
        validate_dataset(d, resolution=16)
    with pytest.raises(DatasetError, match="must be a folder or a .zip"):
        validate_dataset(d / "a.png")
    with pytest.raises(DatasetError, match="dataset not found"):
        validate_dataset(tmp_path / "nope")


def test_validation_does_not_import_torch(tmp_path):
    """The API validates uploads in a process that must stay free of torch."""
    import subprocess
    import sys

    (tmp_path / "a.png").write_bytes(png_bytes())
    code = (
        "import sys, core.data, core.synth; r = core.data.validate_dataset(sys.argv[1], resolution=64, "
        "min_side=32); assert r.usable == 1; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=Path(__file__).parents[2])


def test_cli_prints_the_report_and_fails_on_unusable(tmp_path, capsys):
    from core.data.__main__ import main

    (tmp_path / "a.png").write_bytes(png_bytes((160, 160)))
    assert main([str(tmp_path), "--resolution", "128"]) == 0  # min_side defaults to min(256, 128)
    assert json.loads(capsys.readouterr().out)["usable"] == 1
    assert main([str(tmp_path), "--resolution", "512"]) == 1  # 160 px < min(256, 512)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["too_small"][0]["name"] == "a.png"
    assert "a.png: 160x160: shortest side under 256 px" in captured.err
