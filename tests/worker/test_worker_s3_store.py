"""Jobs run in-process on an S3 store (moto's real S3 server), as two machines with data folders of their own:
a training on A puts its checkpoint (with its manifest) and its LoRA into the bucket; a generation on B finds
the LoRA there, fetches it into B's cache once, and puts its images into the bucket. (The same across
processes, with a SIGKILL and a resume: tests/e2e/test_e2e_s3.py, marked slow.)

    .venv/bin/python -m pytest tests/worker/test_worker_s3_store.py -q
"""

from __future__ import annotations

import io

from PIL import Image
from s3_helpers import object_keys, store_settings
from worker_helpers import put_dataset

from db.generations import create_generation, get_generation
from db.loras import get_lora
from db.owners import create_owner
from db.training import create_training, get_training
from service.s3_store import MANIFEST
from worker import generation, training
from worker.context import WorkerContext


def test_a_lora_trained_on_one_machine_generates_on_another_through_the_bucket(
    worker_ctx, tiny_model, s3_server, s3_bucket, tmp_path
):
    shared = worker_ctx.settings.model_copy(
        update={"model_path": tiny_model, "progress_interval_s": 0.0, **store_settings(s3_server, s3_bucket)}
    )
    a = WorkerContext(shared.model_copy(update={"data_dir": tmp_path / "a"}))
    b = WorkerContext(shared.model_copy(update={"data_dir": tmp_path / "b"}))
    try:
        with a.sessions() as s:
            owner = create_owner(s, name="s3")
        ds = put_dataset(a, owner.id)  # written key by key: read back by listing (no manifest)
        params = {"steps": 4, "rank": 4, "alpha": 4.0, "learning_rate": 1e-3, "resolution": 64, "batch_size": 1}
        params |= {"sample_every": 0, "sample_prompts": [], "seed": 3, "gradient_checkpointing": False}
        with a.sessions() as s:
            job = create_training(
                s, owner_id=owner.id, dataset_id=ds.id, name="j", trigger="sks", params=params, total_steps=4
            )
        assert training.run_training(job.id, a) == "succeeded"
        with a.sessions() as s:
            row = get_training(s, job_id=job.id)
            lora = get_lora(s, lora_id=row.lora.id)
        keys = object_keys(s3_server, s3_bucket)
        assert f"o1lora/{row.checkpoint_path}/{MANIFEST}" in keys
        assert f"o1lora/{row.checkpoint_path}/weights.safetensors" in keys
        assert f"o1lora/{lora.comfyui_key}" in keys and f"o1lora/{lora.peft_prefix}/{MANIFEST}" in keys

        p = {"prompt": "sks, a red square", "negative_prompt": " ", "width": 64, "height": 32, "steps": 2}
        p |= {"guidance": 2.0, "seed": 7, "preset": "full", "num_images": 1}
        p["loras"] = [{"id": lora.id, "scale": 1.0}]
        with b.sessions() as s:
            gen = create_generation(
                s, owner_id=owner.id, prompt=p["prompt"], params=p, num_images=1, total_steps=2
            )
        assert generation.run_generation(gen.id, b) == "succeeded"
        with b.sessions() as s:
            image_key = get_generation(s, job_id=gen.id).images[0].storage_key
        assert f"o1lora/{image_key}" in object_keys(s3_server, s3_bucket)
        with b.store.open(image_key) as f:
            assert Image.open(io.BytesIO(f.read())).size == (64, 32)
        (entry,) = (tmp_path / "b" / "cache" / "files").iterdir()  # B's one copy of the LoRA, keyed by content
        assert (entry / "lora.safetensors").read_bytes() == b.store.open(lora.comfyui_key).read()
        assert not (tmp_path / "a" / "artifacts").exists() and not (tmp_path / "b" / "artifacts").exists()
    finally:
        a.close()
        b.close()
