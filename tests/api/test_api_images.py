"""Reference images over HTTP: upload (the dataset checks: type, bytes, pixels, a full decode), ownership, and
`reference_images` on a generation (wrong id, another owner's, too many -> 4xx naming the item).

    .venv/bin/python -m pytest tests/api/test_api_images.py -q
"""

from __future__ import annotations

from api_helpers import auth, png, queued_messages


def upload(client, owner, data, name="ref.png", mime="image/png"):
    return client.post("/v1/images", headers=auth(owner), files={"file": (name, data, mime)})


def test_upload_read_download_list_and_delete(client, alice, store):
    data = png(80, 48, color=(10, 200, 30), fmt="JPEG")
    r = upload(client, alice, data, "cat.jpg", "image/jpeg")
    assert r.status_code == 201, r.text
    img = r.json()
    assert (img["name"], img["format"], img["width"], img["height"], img["size_bytes"]) == (
        "cat.jpg",
        "JPEG",
        80,
        48,
        len(data),
    )
    assert client.get(f"/v1/images/{img['id']}", headers=auth(alice)).json() == img
    f = client.get(f"/v1/images/{img['id']}/file", headers=auth(alice))
    assert f.status_code == 200 and f.headers["content-type"] == "image/jpeg" and f.content == data
    assert img["id"] in [i["id"] for i in client.get("/v1/images", headers=auth(alice)).json()["data"]]
    assert client.delete(f"/v1/images/{img['id']}", headers=auth(alice)).status_code == 204
    assert client.get(f"/v1/images/{img['id']}", headers=auth(alice)).status_code == 404
    assert not [k for k in store.list("images") if img["id"] in k]


def test_another_owners_image_is_404_everywhere(client, alice, bob):
    img = upload(client, alice, png()).json()
    for path in (f"/v1/images/{img['id']}", f"/v1/images/{img['id']}/file"):
        assert client.get(path, headers=auth(bob)).status_code == 404
    assert client.delete(f"/v1/images/{img['id']}", headers=auth(bob)).status_code == 404
    r = client.post("/v1/generations", headers=auth(bob), json={"prompt": "p", "reference_images": [img["id"]]})
    assert r.status_code == 404
    assert r.json()["error"]["field"] == "reference_images[0]" and img["id"] in r.json()["error"]["message"]
    assert client.get(f"/v1/images/{img['id']}", headers=auth(alice)).status_code == 200  # still alice's


def test_bad_uploads_name_the_file(client, alice, settings):
    cases = [
        (b"not an image at all", "junk.png", 422, "junk.png: not a readable"),
        (png()[:-40], "cut.png", 422, "cut.png"),  # header fine, pixels truncated
        (png(600, 600), "big.png", 413, "big.png: 600x600"),  # over max_image_pixels (512^2)
        (b"x" * (settings.max_upload_file_bytes + 1), "huge.png", 413, "huge.png: over the size limit"),
        (png(), "ref.gif", 422, "ref.gif: file type not allowed"),
        (b"", "empty.png", 422, "empty.png: the file is empty"),
    ]
    for data, name, code, words in cases:
        r = upload(client, alice, data, name)
        assert r.status_code == code, (name, r.text)
        assert words in r.json()["error"]["message"], (name, r.text)
        assert r.json()["error"]["field"] == "file"


def test_generation_with_references_records_them_in_order(client, alice, key_prefix):
    a, b = upload(client, alice, png(color=(1, 2, 3))).json(), upload(client, alice, png(color=(4, 5, 6))).json()
    r = client.post(
        "/v1/generations",
        headers=auth(alice),
        json={"prompt": "make the shape blue", "reference_images": [b["id"], a["id"]], "width": 64, "height": 64},
    )
    assert r.status_code == 202, r.text
    gen = r.json()
    assert gen["params"]["reference_images"] == [b["id"], a["id"]]
    assert [m for m in queued_messages(key_prefix, "generate") if m["args"] == [gen["id"]]]
    plain = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p"}).json()
    assert plain["params"]["reference_images"] == []  # text-to-image as before


def test_bad_reference_lists_name_the_item(client, alice):
    ok = upload(client, alice, png()).json()["id"]
    r = client.post(
        "/v1/generations", headers=auth(alice), json={"prompt": "p", "reference_images": [ok, "nope0000"]}
    )
    assert r.status_code == 404 and r.json()["error"]["field"] == "reference_images[1]"
    assert "image nope0000 not found" in r.json()["error"]["message"]
    r = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "reference_images": [ok] * 11})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference_images", r.text
    assert "10" in r.json()["error"]["message"]
    r = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "reference_images": [ok, ""]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference_images[1]", r.text
    r = client.post("/v1/generations", headers=auth(alice), json={"prompt": "p", "reference_images": ok})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference_images", r.text


def test_references_are_priced_by_the_tokens_they_add(client, alice, Session, settings):
    """A request at exactly the cost bound fits without references and is refused with one (422 saying that the
    references' tokens are what tipped it, and by how much); nothing is written."""
    from api_helpers import db_counts

    from core.reference_sizes import total_reference_tokens

    side = 2048
    steps = settings.max_generation_cost // (side * side)  # the bound exactly: it fits as it is
    body = {"prompt": "p", "width": side, "height": side, "steps": steps}
    assert client.post("/v1/generations", headers=auth(alice), json=body).status_code == 202
    ref = upload(client, alice, png(80, 48)).json()
    before = db_counts(Session)
    r = client.post("/v1/generations", headers=auth(alice), json={**body, "reference_images": [ref["id"]]})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    tokens = total_reference_tokens([(80, 48)], side, side)
    assert tokens > (side // 32) ** 2  # the raw copy at the target's area, plus the vision-tower copy
    assert error["code"] == "over_cost_bound" and error["field"] == "reference_images"
    assert f"the reference images add {tokens} tokens" in error["message"]
    assert str((side * side + 1024 * tokens) * steps) in error["message"]
    assert str(settings.max_generation_cost) in error["message"]
    assert db_counts(Session) == before
    # the same reference on a smaller request is fine: it is the sum that is bounded
    small = {**body, "width": 512, "height": 512, "reference_images": [ref["id"]]}
    assert client.post("/v1/generations", headers=auth(alice), json=small).status_code == 202


def test_a_reference_that_cannot_shrink_to_the_target_is_422_naming_it(client, alice):
    """Ten references share a 64 px target: each raw copy gets a 16 px area, under one 32 px patch."""
    ids = [upload(client, alice, png(64, 48)).json()["id"] for _ in range(10)]
    body = {"prompt": "p", "width": 64, "height": 64, "steps": 2, "reference_images": ids}
    r = client.post("/v1/generations", headers=auth(alice), json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "reference_images[0]" and "image 64x48 is too small" in error["message"]
    assert "fewer reference images" in error["message"]
