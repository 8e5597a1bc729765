"""Evidence, through the service: an instruction-editing LoRA ("make the shape blue") trained on edit pairs of
core.synth by the bundled model, scored on held-out pairs against the base model (docs/evidence.md).

Everything goes the way a user's requests go: the pairs are uploaded as a zip (POST /v1/datasets, the
metadata.jsonl edit convention), the training is submitted (POST /v1/trainings) and run by the worker's
training runner, each held-out reference is uploaded (POST /v1/images), and generations with
`reference_images` (with the LoRA, and without it) are run by the worker's generation runner and downloaded.

    .venv/bin/python -m pytest tests/worker/test_worker_edit_lora.py -q -s -m slow
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.synth import render
from core.synth.edit_pairs import edit_scenes, edit_score, instruction, write_edit_pairs
from db.owners import create_api_key, create_owner
from worker import generation, training
from worker.context import WorkerContext

MODEL = Path(__file__).resolve().parents[2] / "models" / "o1-shapes"
COLOUR, TRIGGER, SIZE = "blue", "sks edit", 128
PAIRS = 200  # 24 pairs let a LoRA memorise where their shapes were instead of reading the reference
# The recipe of docs/evidence.md, section 3 (explored with bench/edit_lora_explore.py): rank 16 at 2e-3 with a
# short warm-up and a cosine decay (rank 32 at a constant 3e-3 collapsed to one grey image for every input).
TRAIN = dict(
    steps=600,
    learning_rate=2e-3,
    lr_schedule="cosine",
    warmup_steps=20,
    batch_size=2,
    rank=16,
    alpha=16.0,
    resolution=SIZE,
    seed=0,
    sample_every=0,
)
SAMPLING = dict(width=SIZE, height=SIZE, steps=20, guidance=3.0, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~20 min of a loaded 2-core machine: training 600 steps, then 16 generations
def test_edit_lora_trained_through_the_service_recolours_held_out_pairs(worker_ctx, tmp_path):
    from api.main import create_app

    c = WorkerContext(
        worker_ctx.settings.model_copy(
            update={"model_path": MODEL, "progress_interval_s": 0.0, "generate_compile": "off"}
        )
    )
    with c.sessions() as s:
        owner = create_owner(s, name="editor")
        headers = {"Authorization": f"Bearer {create_api_key(s, owner_id=owner.id)}"}
    with TestClient(create_app(c.settings, store=c.store)) as client:
        pairs = write_edit_pairs(tmp_path / "pairs", edit_scenes(5, PAIRS, COLOUR), COLOUR, SIZE)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(pairs.iterdir()):
                zf.write(f, f.name)
        r = client.post(
            "/v1/datasets",
            headers=headers,
            data={"resolution": str(SIZE)},
            files=[("files", ("pairs.zip", buf.getvalue(), "application/zip"))],
        )
        assert r.status_code == 201, r.text
        assert (r.json()["report"]["usable"], r.json()["report"]["with_references"]) == (PAIRS, PAIRS)
        r = client.post(
            "/v1/trainings", headers=headers, json={"dataset_id": r.json()["id"], "trigger": TRIGGER, **TRAIN}
        )
        assert r.status_code == 202, r.text
        t0 = time.monotonic()
        assert training.run_training(r.json()["id"], c) == "succeeded"
        print(f"\ntraining through the service: {time.monotonic() - t0:.0f} s", flush=True)
        job = client.get(f"/v1/trainings/{r.json()['id']}", headers=headers).json()
        lora_id = job["lora_id"]

        held = edit_scenes(999, 8, COLOUR)
        rows, images = {"base": [], "lora": []}, {"base": [], "lora": []}
        prompt = f"{TRIGGER}, {instruction(COLOUR)}"
        for scene in held:
            png = io.BytesIO()
            render(scene, SIZE).save(png, format="PNG")
            ref = client.post(
                "/v1/images", headers=headers, files={"file": ("ref.png", png.getvalue(), "image/png")}
            )
            assert ref.status_code == 201, ref.text
            for name, loras in (("base", []), ("lora", [{"id": lora_id, "scale": 1.0}])):
                g = client.post(
                    "/v1/generations",
                    headers=headers,
                    json={"prompt": prompt, "reference_images": [ref.json()["id"]], "loras": loras, **SAMPLING},
                )
                assert g.status_code == 202, g.text
                assert generation.run_generation(g.json()["id"], c) == "succeeded"
                got = client.get(f"/v1/generations/{g.json()['id']}/images/0", headers=headers)
                img = Image.open(io.BytesIO(got.content)).convert("RGB")
                images[name].append(img)
                row = edit_score(img, scene, COLOUR)
                row["background_ok"] = row["background"] == scene.background  # the reference's, kept
                rows[name].append(row)
                print(name, row, flush=True)
    summary = {
        name: {k: float(np.mean([r[k] for r in v])) for k in ("colour_ok", "kept", "score", "background_ok")}
        for name, v in rows.items()
    }
    print("\nedit LoRA evidence:", json.dumps(summary))
    grid = Image.new("RGB", (3 * SIZE, len(held) * SIZE))  # reference | base | LoRA per held-out pair
    for i, scene in enumerate(held):
        for j, img in enumerate((render(scene, SIZE), images["base"][i], images["lora"][i])):
            grid.paste(img, (j * SIZE, i * SIZE))
    grid.save(tmp_path / "edit_lora_grid.png")  # docs/images/edit_lora_grid.png is one such grid
    print("grid:", tmp_path / "edit_lora_grid.png")
    c.close()
    # Measured 2026-12-01 on the repretrained bundled model (docs/evidence.md, 3): the LoRA recolours every held-out
    # shape (colour_ok 1.0 vs the base's 0) and keeps the rest of the scene in 5 of 8 (the other 3: a small shape
    # drawn as a blob of the wrong class); the base reads "blue" as the background's colour (background_ok 0).
    assert summary["lora"]["colour_ok"] >= summary["base"]["colour_ok"] + 0.75, summary
    assert summary["lora"]["kept"] >= summary["base"]["kept"] + 0.4, summary
    assert summary["lora"]["background_ok"] >= summary["base"]["background_ok"] + 0.5, summary
