"""`o1lora generate --ref`: a reference image file is uploaded (POST /v1/images) and conditions the
generation; an id that is not one of the caller's images is refused naming the flag (issue 11 on the CLI)."""

from __future__ import annotations

import httpx
from PIL import Image


def test_generate_with_a_reference_file_uploads_it_and_the_job_records_it(cli, tmp_path):
    ref = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ref)
    args = ["--width", "64", "--height", "64", "--steps", "2", "--seed", "3"]
    out = cli.run("generate", "make it blue", "--ref", str(ref), "-o", "edit.png", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "edit.png").size == (64, 64)

    auth = {"Authorization": f"Bearer {cli.key}"}
    gens = httpx.get(f"{cli.url}/v1/generations", headers=auth).json()["data"]
    job = next(g for g in gens if g["prompt"] == "make it blue")
    (image_id,) = job["params"]["reference_images"]
    image = httpx.get(f"{cli.url}/v1/images/{image_id}", headers=auth).json()
    assert (image["width"], image["height"]) == (64, 64)

    # the uploaded image's id works as --ref too; a foreign or made-up id is refused before anything runs
    again = cli.run("generate", "make it blue", "--ref", image_id, "-o", "again.png", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    bad = cli.run("generate", "make it blue", "--ref", "nosuchimage", "-o", "bad.png", *args, cwd=tmp_path)
    assert bad.returncode == 1
    assert "field: reference_images[0] (set by --ref)" in bad.stderr
    assert not (tmp_path / "bad.png").exists()
