"""Dataset uploads: plain files and zips are validated by the trainer's check and stored; list/get/delete.

.venv/bin/python -m pytest tests/api/test_api_datasets.py -q
"""

from __future__ import annotations

from api_helpers import auth, png, store_files, zip_bytes


def test_upload_files_gives_counts_and_the_validation_report(client, alice, dataset, store):
    assert dataset["name"] == "boxes"
    assert (dataset["num_images"], dataset["num_captions"]) == (2, 1)
    report = dataset["report"]
    assert report["ok"] is True and report["usable"] == 2 and report["missing_captions"] == ["b.jpg"]
    assert report["source"] == "upload" and report["resolution"] == 64
    keys = store.list(f"datasets/{dataset['id']}")
    assert [k.rsplit("/", 1)[1] for k in keys] == ["a.png", "a.txt", "b.jpg"]
    got = client.get(f"/v1/datasets/{dataset['id']}", headers=auth(alice)).json()
    assert got["report"] == report and got["total_bytes"] == dataset["total_bytes"] > 0


def test_upload_zip_keeps_folders_and_skips_os_litter(client, alice, store):
    data = zip_bytes(
        {
            "set/x.png": png(),
            "set/x.txt": b"x caption",
            "set/y.webp": png(fmt="WEBP"),
            "__MACOSX/set/._x.png": b"junk",
            "set/.DS_Store": b"junk",
        }
    )
    r = client.post(
        "/v1/datasets", headers=auth(alice), files=[("files", ("photos.zip", data, "application/zip"))]
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["name"], ds["num_images"], ds["num_captions"]) == ("photos.zip", 2, 1)
    assert store.list(f"datasets/{ds['id']}") == [
        f"datasets/{ds['id']}/set/{n}" for n in ("x.png", "x.txt", "y.webp")
    ]


def test_list_paginates_newest_first_and_delete_removes_row_and_files(client, alice, settings):
    ids = []
    for i in range(3):
        r = client.post("/v1/datasets", headers=auth(alice), files=[("files", (f"{i}.png", png(), "image/png"))])
        ids.append(r.json()["id"])
    page = client.get("/v1/datasets?limit=2", headers=auth(alice)).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["count"] >= 3
    assert client.get("/v1/datasets?limit=2&offset=1", headers=auth(alice)).json()["data"][0]["id"] == ids[1]
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=auth(alice)).status_code == 204
    assert client.get(f"/v1/datasets/{ids[0]}", headers=auth(alice)).status_code == 404
    assert not any(f.startswith(f"datasets/{ids[0]}/") for f in store_files(settings))
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=auth(alice)).status_code == 404


def test_dataset_of_a_queued_job_cannot_be_deleted(client, alice, dataset):
    job = client.post("/v1/trainings", headers=auth(alice), json={"dataset_id": dataset["id"], "trigger": "sks"})
    assert job.status_code == 202
    r = client.delete(f"/v1/datasets/{dataset['id']}", headers=auth(alice))
    assert r.status_code == 409 and "cancel it first" in r.json()["error"]["message"]
    client.post(f"/v1/trainings/{job.json()['id']}/cancel", headers=auth(alice))
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=auth(alice)).status_code == 204


def test_the_validation_dataset_of_a_queued_job_cannot_be_deleted(client, alice, dataset):
    files = [("files", ("v.png", png(), "image/png"))]
    held = client.post("/v1/datasets", headers=auth(alice), files=files, data={"resolution": "64"}).json()
    job = client.post(
        "/v1/trainings",
        headers=auth(alice),
        json={"dataset_id": dataset["id"], "trigger": "sks", "validation_dataset_id": held["id"]},
    )
    assert job.status_code == 202, job.text
    assert client.delete(f"/v1/datasets/{held['id']}", headers=auth(alice)).status_code == 409
    client.post(f"/v1/trainings/{job.json()['id']}/cancel", headers=auth(alice))
    assert client.delete(f"/v1/datasets/{held['id']}", headers=auth(alice)).status_code == 204


def test_long_file_names_make_a_valid_default_name(client, alice):
    long = "x" * 240 + ".png"
    r = client.post(
        "/v1/datasets",
        headers=auth(alice),
        files=[("files", (long, png(), "image/png")), ("files", ("b.png", png(), "image/png"))],
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "x" * 150 + " and 1 more"


def test_small_images_are_a_warning_at_upload_not_a_refusal(settings, tmp_path):
    """128-px images (README's `core.synth --size 128`) train at resolution 128: with the production floor of
    256 px they are kept, named in the report's warnings and `small`; the trainer checks them at its own
    resolution. Images no training resolution can use (under 32 px) are still refused."""
    import io

    from api.uploads import Incoming, UploadError, prepare_dataset

    prod = settings.model_copy(update={"dataset_min_side": 256})
    files = [Incoming(f"{i}.png", io.BytesIO(png(128, 128, (40 * i, 0, 0)))) for i in range(3)]
    staged, report = prepare_dataset(files, tmp_path / "a", prod, resolution=1024)
    assert report["usable"] == 3 and report["too_small"] == [] and len(report["small"]) == 3
    assert any("3 image(s) have a shortest side under 256 px" in w for w in report["warnings"])
    _, at_128 = prepare_dataset(
        [Incoming("0.png", io.BytesIO(png(128, 128)))], tmp_path / "b", prod, resolution=128
    )
    assert at_128["small"] == [] and at_128["usable"] == 1  # as large as the training size: no warning
    try:
        prepare_dataset([Incoming("t.png", io.BytesIO(png(24, 24)))], tmp_path / "c", prod, resolution=1024)
    except UploadError as e:
        assert "t.png: 24x24: shortest side under 32 px" in str(e)
    else:
        raise AssertionError("a 24-px image was accepted")
