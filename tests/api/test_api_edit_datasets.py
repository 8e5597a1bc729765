"""Edit / personalisation datasets through the upload route: a zip in either convention is accepted with its
sample counts, and a bad or missing reference refuses the upload with the report naming target and reference."""

from __future__ import annotations

import json

from api_helpers import auth, png, zip_bytes


def post_zip(client, owner, entries):
    return client.post(
        "/v1/datasets",
        headers=auth(owner),
        data={"resolution": "64"},
        files=[("files", ("edits.zip", zip_bytes(entries), "application/zip"))],
    )


def test_edit_dataset_zip_in_both_conventions(client, alice):
    meta = json.dumps({"file": "out.png", "text": "make the shape blue", "references": ["in.png"]})
    entries = {
        "out.png": png(64, 64),
        "in.png": png(64, 64, color=(0, 0, 200)),
        "metadata.jsonl": meta.encode(),
        "b.png": png(64, 64),
        "b.txt": b"combine",
        "control/b_0.png": png(64, 64),
        "control/b_1.png": png(48, 64),
    }
    r = post_zip(client, alice, entries)
    assert r.status_code == 201, r.text
    report = r.json()["report"]
    assert (report["usable"], report["with_references"], report["bad_references"]) == (2, 2, [])


def test_missing_or_unreadable_reference_is_named(client, alice):
    meta = json.dumps({"file": "out.png", "text": "t", "references": ["gone.png", "bad.png"]})
    r = post_zip(
        client,
        alice,
        {
            "out.png": png(64, 64),
            "ok.png": png(64, 64),
            "bad.png": png(64, 64)[:-40],  # header fine, pixels cut
            "metadata.jsonl": meta.encode(),
        },
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "out.png" in err["message"] and "reference gone.png: not in the dataset" in err["message"]
    [bad] = err["report"]["bad_references"]
    assert bad["name"] == "out.png" and "reference bad.png" in bad["reason"]
