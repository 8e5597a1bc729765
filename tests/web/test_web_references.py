"""Reference images on the generate page, in a real browser against the real service: picked files are uploaded
(POST /v1/images) and shown as thumbnails, one can be removed, more than the API's limit and a file that is not
an image are refused with a message naming them, and the generation is sent with `reference_images` and runs.
Saves docs/images/web_generate_references.png when O1LORA_WEB_SCREENSHOTS=docs/images."""

from __future__ import annotations

from web_helpers import all_css, css, fill, images_loaded, screenshot, sign_in, wait_for

from core.synth import render
from core.synth.edit_pairs import edit_scenes

SIDE = 128  # the bundled model's native size
EDIT = "change the background to light green"


def thumbs(d) -> list[str]:
    return [t.get_attribute("data-id") for t in all_css(d, "#reference-thumbs .ref-thumb[data-id]")]


def test_generate_with_a_reference_image(service, browser, screenshots, tmp_path):
    d = browser
    sign_in(d, service)
    css(d, "nav a[href='#generate']").click()
    wait_for(d, lambda d: css(d, "#generate-form") and css(d, "#reference-files"))
    assert css(d, "#reference-count").text == "0 of at most 10"  # the limit is the API's (OpenAPI maxItems)

    # the reference: a single-shape scene of the bundled model's world; a second file that is not an image
    scene = edit_scenes(3, 1, "blue")[0]
    ref = tmp_path / "shape.png"
    render(scene, SIDE).save(ref)
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is no image")
    before = service.http.get("/v1/images").json()["count"]
    css(d, "#reference-files").send_keys(f"{ref}\n{junk}")
    wait_for(d, lambda d: len(thumbs(d)) == 1 and css(d, "#reference-status .error"))
    assert "notes.png" in css(d, "#reference-status .error").text  # the API's refusal, naming the file
    wait_for(d, lambda d: images_loaded(d, "#reference-thumbs img") == [(SIDE, SIDE)])  # the uploaded file itself
    assert service.http.get("/v1/images").json()["count"] == before + 1

    # eleven more files: ten fit in all, the rest are named and not uploaded; remove brings the count down
    copies = []
    for i in range(10):
        copies.append(tmp_path / f"copy{i}.png")
        copies[-1].write_bytes(ref.read_bytes())
    css(d, "#reference-files").send_keys("\n".join(str(p) for p in copies))
    wait_for(d, lambda d: len(thumbs(d)) == 10 and not all_css(d, "#reference-thumbs .pending"))
    error = css(d, "#reference-status .error").text
    assert "at most 10 reference images: 1 file(s) not added (copy9.png)" in error
    assert css(d, "#reference-count").text == "10 of at most 10"
    assert not css(d, "#reference-files").is_enabled()
    for _ in range(9):
        css(d, "#reference-thumbs .ref-thumb:last-child button.remove").click()
    wait_for(d, lambda d: len(thumbs(d)) == 1)
    [kept] = thumbs(d)
    assert css(d, "#reference-count").text == "1 of at most 10" and css(d, "#reference-files").is_enabled()

    # the generation: an edit instruction with the reference, sent as reference_images (one of the edits the
    # bundled model was pretrained on, so the screenshot shows the edit done)
    fill(d, "#f-prompt", EDIT)
    fill(d, "#f-width", SIDE)
    fill(d, "#f-height", SIDE)
    css(d, "#generate-form details summary").click()
    fill(d, "#f-steps", 10)
    fill(d, "#f-guidance", 3)
    fill(d, "#f-num_images", 1)
    fill(d, "#f-seed", 5)
    css(d, "#generate-form button[type=submit]").click()
    wait_for(d, lambda d: css(d, "#current .gen"))
    wait_for(d, lambda d: css(d, "#current .gen .badge").text == "succeeded", timeout=180)
    wait_for(d, lambda d: images_loaded(d, "#current .gen .gallery-images img") == [(SIDE, SIDE)])
    wait_for(d, lambda d: images_loaded(d, "#current .gen .ref-strip img") == [(SIDE, SIDE)])  # its reference
    gen = service.http.get("/v1/generations").json()["data"][0]
    assert gen["status"] == "succeeded" and gen["params"]["reference_images"] == [kept]
    assert gen["prompt"] == EDIT
    screenshot(d, screenshots, "web_generate_references")

    # a request the API refuses because of its references is shown, with the reference marked: ten copies of
    # the reference on a 64 px target cannot be resized (each raw copy would get a 16 px area)
    css(d, "#reference-files").send_keys("\n".join(str(p) for p in copies[:9]))
    wait_for(d, lambda d: len(thumbs(d)) == 10 and not all_css(d, "#reference-thumbs .pending"))
    fill(d, "#f-width", 64)
    fill(d, "#f-height", 64)
    count = service.http.get("/v1/generations").json()["count"]
    css(d, "#generate-form button[type=submit]").click()
    refused = wait_for(d, lambda d: css(d, "#generate-status .error"))
    assert "reference_images[0]" in refused.text and "fewer reference images" in refused.text
    assert "invalid" in css(d, "#reference-thumbs .ref-thumb[data-index='0']").get_attribute("class")
    assert service.http.get("/v1/generations").json()["count"] == count
    # the only console errors: the refused upload, the refused generation
    errors = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 2 and "/v1/images" in errors[0] and "/v1/generations" in errors[1], errors
