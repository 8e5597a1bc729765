"""Helpers shared by the worker tests (a module name of its own: tests/ folders are not packages)."""

from __future__ import annotations

import uuid

# This run's broker: the local Redis, database 11, under a prefix no other run uses.
TEST_BROKER = "redis://127.0.0.1:6379/11"
RUN_PREFIX = f"o1lora-test-{uuid.uuid4().hex[:8]}:"


def worker_env(c, model_path, **settings: str) -> dict[str, str]:
    """The O1LORA_* environment of a worker process (ops.launcher.Launcher) on this test run's database, broker,
    key prefix and data folder, with `model_path`; `settings` adds or overrides O1LORA_* values."""
    from worker.celery_app import app  # built on the test broker by conftest before any test runs

    return {
        "O1LORA_DATABASE_URL": c.settings.resolved_database_url,
        "O1LORA_BROKER_URL": app.conf.broker_url,
        "O1LORA_BROKER_KEY_PREFIX": RUN_PREFIX,
        "O1LORA_DATA_DIR": str(c.settings.data_dir),
        "O1LORA_MODEL_PATH": str(model_path),
        **settings,
    }


def put_dataset(c, owner_id: str, n: int = 4, side: int = 256):
    """A small captioned dataset in the store (coloured squares on grey), and its row."""
    import io

    from PIL import Image, ImageDraw

    from db.datasets import create_dataset, new_dataset_id

    dataset_id = new_dataset_id()
    prefix = f"datasets/{dataset_id}"
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    for i in range(n):
        img = Image.new("RGB", (side, side), (128, 128, 128))
        d = ImageDraw.Draw(img)
        o = 20 + 15 * i
        d.rectangle([o, o, o + side // 3, o + side // 3], fill=colours[i % len(colours)])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        c.store.put_bytes(f"{prefix}/img_{i:03d}.png", buf.getvalue())
        c.store.put_bytes(f"{prefix}/img_{i:03d}.txt", f"a {colours[i % len(colours)]} square".encode())
    with c.sessions() as s:
        return create_dataset(
            s,
            dataset_id=dataset_id,
            owner_id=owner_id,
            name="squares",
            storage_prefix=prefix,
            num_images=n,
            num_captions=n,
            total_bytes=0,
            report={},
        )
