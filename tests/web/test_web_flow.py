"""The web page in a real browser against the real service: sign in -> upload a dataset -> train a few steps ->
the live loss curve and a preview -> download the LoRA -> generate with it -> the images in the gallery.
Screenshots of each page are saved (see conftest.py)."""

from __future__ import annotations

import json

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from web_helpers import all_css, css, fill, images_loaded, screenshot, sign_in, wait_for

from core.synth.cli import write_dataset

STEPS = 24  # enough progress reports (every 0.2 s in these tests) for a curve of several points
SIDE = 128  # the bundled model's native size: previews and images show shapes


def test_served_page_leaves_the_api_alone(service):
    http = service.http
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    for asset in ("/web/app.js", "/web/style.css", "/web/sse.js"):
        assert http.get(asset).status_code == 200, asset
    # everything the page loads comes from the service: no http(s):// URL in any of its files
    for name in (
        "app.js",
        "api.js",
        "sse.js",
        "schema.js",
        "trainings.js",
        "generate.js",
        "datasets.js",
        "loras.js",
        "ui.js",
        "loss_chart.js",
        "presets.js",
        "references.js",
        "style.css",
    ):
        assert "http://" not in http.get(f"/web/{name}").text and "https://" not in http.get(f"/web/{name}").text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    assert "/" not in spec["paths"] and not any(p.startswith("/web") for p in spec["paths"])
    missing = http.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert http.get("/web/nothing.js").status_code == 404


def test_whole_flow_in_the_browser(service, browser, screenshots, tmp_path):
    d, base = browser, service.base_url
    d.get(base + "/")

    # -- sign in: a wrong key is refused on the spot, the right one opens the datasets page
    wait_for(d, lambda d: css(d, "#signin"))
    screenshot(d, screenshots, "web_signin")
    fill(d, "#api-key", "not-a-key")
    css(d, "#signin button[type=submit]").click()
    wait_for(d, lambda d: "not accepted" in css(d, "#signin .error").text)
    fill(d, "#api-key", service.http.headers["Authorization"].split()[1])
    css(d, "#signin button[type=submit]").click()
    wait_for(d, lambda d: css(d, "#dataset-form"))
    assert (
        d.execute_script("return sessionStorage.getItem('o1lora.apiKey')")
        == service.http.headers["Authorization"].split()[1]
    )

    # -- upload a zip written by core.synth; the validation report is shown
    archive = write_dataset(tmp_path / "shapes", n=6, size=SIDE, style="hatched", trigger="", as_zip=True)
    css(d, "#dataset-files").send_keys(str(archive))
    fill(d, "#dataset-name", "hatched shapes")
    fill(d, "#dataset-resolution", SIDE)
    css(d, "#dataset-form button[type=submit]").click()
    ok = wait_for(d, lambda d: css(d, "#dataset-ok"))
    assert "6 image(s)" in ok.text
    report = css(d, "#dataset-form .report").text
    assert "Images that train\n6" in report and f"{SIDE}x{SIDE} ×6" in report
    screenshot(d, screenshots, "web_datasets")

    # -- the training form: help text from the OpenAPI document, presets fill the fields
    ok.find_element(By.LINK_TEXT, "Train on it →").click()
    wait_for(d, lambda d: css(d, "#training-form"))
    spec = service.http.get("/openapi.json").json()["components"]["schemas"]["TrainingCreate"]["properties"]
    for field in ("rank", "learning_rate", "sample_every", "flip"):
        assert css(d, f".field-{field} .help").get_attribute("textContent") == spec[field]["description"]
    assert Select(css(d, "#f-dataset_id")).first_selected_option.text.startswith("hatched shapes")
    css(d, "button[data-preset=quick]").click()
    assert (
        css(d, "#f-rank").get_attribute("value") == "8" and css(d, "#f-resolution").get_attribute("value") == "512"
    )
    css(d, "button[data-preset=high]").click()
    assert css(d, "#f-lr_schedule").get_attribute("value") == "cosine"
    css(d, "button[data-preset=quick]").click()
    assert css(d, "#f-lr_schedule").get_attribute("value") == "constant"  # a preset resets what it does not set
    # a value the API refuses: its 422 is shown and the field marked, nothing is started
    fill(d, "#f-trigger", "hatchwork style")
    fill(d, "#f-resolution", 100)
    css(d, "#training-form button[type=submit]").click()
    wait_for(d, lambda d: "resolution" in css(d, "#training-form .error").text)
    assert "invalid" in css(d, "#f-resolution").get_attribute("class")
    assert service.http.get("/v1/trainings").json()["count"] == 0
    for field, value in (
        ("steps", STEPS),
        ("rank", 4),
        ("alpha", 4),
        ("learning_rate", 0.001),
        ("resolution", SIDE),
        ("sample_every", STEPS // 2),
    ):
        fill(d, f"#f-{field}", value)
    # previews without the trigger: the LoRA on | off halves then differ by what the LoRA learned alone
    fill(d, "#f-sample_prompts", "a large red circle in the centre on a white background")
    css(d, "#training-form details summary").click()
    fill(d, "#f-sample_steps", 10)
    css(d, "#training-form button[type=submit]").click()

    # -- the job page follows the SSE stream: status, loss curve, previews, then the downloads
    wait_for(d, lambda d: "#trainings/" in d.current_url and css(d, "#job"))
    job_id = d.current_url.rsplit("/", 1)[1]
    wait_for(d, lambda d: css(d, "#job .badge").text == "succeeded", timeout=180)
    job = service.http.get(f"/v1/trainings/{job_id}").json()
    assert job["status"] == "succeeded" and job["params"]["steps"] == STEPS and job["params"]["rank"] == 4
    assert job["params"]["sample_steps"] == 10 and job["params"]["lr_schedule"] == "constant"
    assert css(d, "dd[data-fact=step]").text == f"{STEPS} / {STEPS}"
    points = int(css(d, "#loss-chart").get_attribute("data-points"))
    assert points >= 3, f"the curve has {points} point(s)"  # progress events arrived live
    assert f"at step {STEPS}" in css(d, "#loss-chart").get_attribute("aria-label")
    wait_for(d, lambda d: len(images_loaded(d, "#previews img")) == 2)  # steps 12 and 24, prompt 0
    assert set(images_loaded(d, "#previews img")) == {(2 * SIDE, SIDE)}  # LoRA on | off, side by side
    assert [s.text for s in all_css(d, "#previews .halves span")[:2]] == ["LoRA on", "LoRA off"]
    wait_for(d, lambda d: css(d, "#job-end .downloads"))
    screenshot(d, screenshots, "web_training")

    css(d, "#job-end button[data-format=comfyui]").click()
    saved = wait_for(d, lambda d: [p for p in d.downloads.glob("*.safetensors")], timeout=30)
    header_len = int.from_bytes(saved[0].read_bytes()[:8], "little")
    keys = json.loads(saved[0].read_bytes()[8 : 8 + header_len])
    assert any(k.startswith("diffusion_model.") and k.endswith(".lora_A.weight") for k in keys)  # ComfyUI's
    assert saved[0].read_bytes() == service.http.get(f"/v1/loras/{job['lora_id']}/file?format=comfyui").content

    # -- generate with the new LoRA: live progress, then the images in the gallery
    css(d, "#job-end").find_element(By.LINK_TEXT, "Generate with it →").click()
    wait_for(d, lambda d: css(d, "#generate-form"))
    assert css(d, f"#lora-picker input.use[data-id='{job['lora_id']}']").is_selected()
    fill(d, "#f-prompt", "a large blue square in the centre on a white background")
    fill(d, "#f-width", SIDE)
    fill(d, "#f-height", SIDE)
    css(d, "#generate-form details summary").click()
    fill(d, "#f-steps", 10)
    fill(d, "#f-guidance", 3)
    fill(d, "#f-num_images", 2)
    fill(d, "#f-seed", 7)
    css(d, "#generate-form button[type=submit]").click()
    wait_for(d, lambda d: css(d, "#current .gen"))
    wait_for(d, lambda d: len(images_loaded(d, "#current .gen img")) == 2, timeout=120)
    assert set(images_loaded(d, "#current .gen img")) == {(SIDE, SIDE)}
    gens = service.http.get("/v1/generations").json()["data"]
    assert gens[0]["status"] == "succeeded" and gens[0]["params"]["loras"] == [
        {"id": job["lora_id"], "scale": 1.0}
    ]
    wait_for(d, lambda d: css(d, "#current .gen .badge").text == "succeeded")
    screenshot(d, screenshots, "web_generate")

    # -- the LoRA list offers every format; the file downloaded above imports back as a new LoRA
    css(d, "nav a[href='#loras']").click()
    row = wait_for(d, lambda d: css(d, f"#lora-table tr[data-id='{job['lora_id']}']"))
    formats = {b.get_attribute("data-format") for b in row.find_elements(By.CSS_SELECTOR, "button[data-format]")}
    assert {"comfyui", "musubi", "diffsynth", "peft"} <= formats
    css(d, "#lora-file").send_keys(str(saved[0]))
    fill(d, "#lora-name", "hatchwork (re-imported)")
    css(d, "#lora-import button[type=submit]").click()
    wait_for(
        d, lambda d: "Imported “hatchwork (re-imported)” (comfyui, rank 4)" in css(d, "#lora-import .ok").text
    )
    wait_for(d, lambda d: len(all_css(d, "#lora-table tbody tr")) == 2)
    imported = service.http.get("/v1/loras").json()["data"][0]
    assert imported["source"] == "imported" and imported["name"] == "hatchwork (re-imported)"
    screenshot(d, screenshots, "web_loras")
    # -- a reload keeps the key (session storage) and the gallery lists the results
    d.get(base + "/#generate")
    wait_for(d, lambda d: len(images_loaded(d, "#gallery img")) == 2)
    css(d, "nav a[href='#trainings']").click()
    wait_for(d, lambda d: css(d, f"#training-table tr[data-id='{job_id}'] .badge").text == "succeeded")
    css(d, "button[data-preset=quick]").click()
    screenshot(d, screenshots, "web_trainings")

    # -- sign out forgets the key
    css(d, "#signout").click()
    wait_for(d, lambda d: css(d, "#signin"))
    assert d.execute_script("return sessionStorage.getItem('o1lora.apiKey')") is None
    # the only console errors of the whole flow are the two refusals above (no CSP violation, no other failure)
    errors = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert len(errors) == 2, errors
    assert "/v1/datasets?limit=1 " in errors[0] and "401" in errors[0], errors  # the wrong key
    assert "/v1/trainings " in errors[1] and "422" in errors[1], errors  # resolution 100


def test_cancel_a_running_training(service, browser, screenshots):
    d = browser
    sign_in(d, service)
    dataset_id = service.http.get("/v1/datasets").json()["data"][0]["id"]
    r = service.http.post(
        "/v1/trainings",
        json={
            "dataset_id": dataset_id,
            "trigger": "hatchwork style",
            "name": "hatchwork style, long run",
            "steps": 5000,
            "rank": 2,
            "resolution": 64,
            "sample_every": 0,
        },
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    d.get(f"{service.base_url}/#trainings/{job_id}")
    wait_for(
        d,
        lambda d: (
            css(d, "#job .badge").text == "running"
            and int(css(d, "#loss-chart").get_attribute("data-points") or 0) >= 1
        ),
        timeout=60,
    )
    assert "ETA" in css(d, "#job .facts").text and css(d, "dd[data-fact=eta]").text != "–"
    # the very button a person aims at stays in the page while progress events come in (a button rebuilt
    # between mouse-down and mouse-up would lose the click; here: StaleElementReferenceException)
    cancel = css(d, "#cancel")
    seen = int(css(d, "#loss-chart").get_attribute("data-points"))
    wait_for(d, lambda d: int(css(d, "#loss-chart").get_attribute("data-points")) >= max(6, seen + 3), timeout=60)
    screenshot(d, screenshots, "web_training_live")
    cancel.click()
    wait_for(d, lambda d: css(d, "#job .badge").text == "canceled", timeout=60)
    job = service.http.get(f"/v1/trainings/{job_id}").json()
    assert job["status"] == "canceled" and 0 < job["progress"]["step"] < 5000
    assert not all_css(d, "#cancel") and "Canceled." in css(d, "#job-end").text
