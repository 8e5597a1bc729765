"""`o1lora presets` lists the service's training recipes and `o1lora train --preset` uses one, with flags winning."""

from __future__ import annotations

from test_cli_service import api


def test_presets_are_listed_and_a_preset_trains_with_the_flags_given_on_top(cli, photos, tmp_path):
    listed = cli.run("presets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line and not line[0].isspace()]
    assert names == list(api(cli).get("/v1/training-presets").json())
    assert "bundled" in names and "rank 16" in listed.stdout

    out = cli.run(
        "train", str(photos), "--trigger", "sks", "--preset", "bundled", "--steps", "2", "--sample-every", "0",
        "--detach", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    params = api(cli).get(f"/v1/trainings/{out.stdout.strip()}").json()["params"]
    assert params["preset"] == "bundled"
    assert (params["steps"], params["sample_every"]) == (2, 0)  # the flags
    assert (params["rank"], params["resolution"], params["learning_rate"]) == (16, 256, 3e-3)  # the preset

    datasets = api(cli).get("/v1/datasets").json()["count"]
    bad = cli.run("train", str(photos), "--trigger", "sks", "--preset", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "--preset 'nope': the service has quick, standard" in bad.stderr
    assert api(cli).get("/v1/datasets").json()["count"] == datasets  # refused before uploading anything


def test_on_the_bundled_model_presets_marks_the_default_and_train_without_preset_uses_it(
    bundled_cli, cli, photos, tmp_path
):
    listed = bundled_cli.run("presets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    marked = [line.split()[0] for line in listed.stdout.splitlines() if "(default" in line]
    assert marked == ["bundled"]
    # the session's service runs a tiny model: no preset is its default, and the listing says so
    other = cli.run("presets", cwd=tmp_path)
    assert "(default" not in other.stdout and "no default preset" in other.stderr

    out = bundled_cli.run(
        "train", str(photos), "--trigger", "sks", "--steps", "2", "--sample-every", "0", "--detach", cwd=tmp_path
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = api(bundled_cli).get(f"/v1/trainings/{out.stdout.strip()}").json()
    params = job["params"]
    assert params["preset"] == "bundled"
    assert (params["steps"], params["sample_every"]) == (2, 0)  # the flags
    assert (params["rank"], params["resolution"], params["learning_rate"]) == (16, 256, 3e-3)  # the default preset
    assert params["prior_preservation"] is True  # the preset's too ...
    off = bundled_cli.run(
        "train", "--dataset", params["dataset_id"], "--trigger", "sks", "--steps", "2", "--sample-every", "0",
        "--no-prior-preservation", "--detach", cwd=tmp_path,
    )  # fmt: skip
    assert off.returncode == 0, off.stderr  # ... unless the flag says otherwise
    assert (
        api(bundled_cli).get(f"/v1/trainings/{off.stdout.strip()}").json()["params"]["prior_preservation"] is False
    )
    # the upload was checked at the size the default preset trains at
    dataset = api(bundled_cli).get(f"/v1/datasets/{params['dataset_id']}").json()
    assert dataset["report"]["resolution"] == 256, dataset["report"]
