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
TRAIN = dict(
    steps=300, learning_rate=3e-3, batch_size=2, rank=8, alpha=8.0, resolution=SIZE, seed=0, sample_every=0
)
SAMPLING = dict(width=SIZE, height=SIZE, steps=20, guidance=3.0, seed=0)


@pytest.mark.slow
# Measured 2026-12-01 (docs/evidence.md, section 3): colour 0.125 vs 0.0, kept 0 vs 0: at this budget the LoRA
# has not learned the edit (it recolours 1 of 8 and draws shapes where the training targets often were).
@pytest.mark.xfail(
    reason="300 CPU steps do not teach the bundled model this edit yet (docs/evidence.md, 3)", strict=False
)
@pytest.mark.timeout(3600)  # ~15-20 min of a loaded 2-core machine: training 300 steps, then 16 generations
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
        pairs = write_edit_pairs(tmp_path / "pairs", edit_scenes(5, 24, COLOUR), COLOUR, SIZE)
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
        assert (r.json()["report"]["usable"], r.json()["report"]["with_references"]) == (24, 24)
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
        rows = {"base": [], "lora": []}
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
                rows[name].append(edit_score(Image.open(io.BytesIO(got.content)).convert("RGB"), scene, COLOUR))
                print(name, rows[name][-1], flush=True)
    summary = {
        name: {k: float(np.mean([r[k] for r in v])) for k in ("colour_ok", "kept", "score")}
        for name, v in rows.items()
    }
    print("\nedit LoRA evidence:", json.dumps(summary))
    c.close()
    assert summary["lora"]["colour_ok"] >= summary["base"]["colour_ok"] + 0.25, summary
    assert summary["lora"]["score"] > summary["base"]["score"], summary
