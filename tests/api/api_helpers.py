"""Helpers for the API tests (a unique module name: tests/*/conftest.py all share the name `conftest`)."""

from __future__ import annotations

import base64
import io
import json
import uuid
import zipfile

import redis
from celery import Celery
from PIL import Image
from sqlalchemy import func, select

from db.models import Base

REDIS_URL = "redis://127.0.0.1:6379/13"


def owner_headers(Session, name: str) -> dict:
    """A new owner with a key: {"Authorization": ..., "owner_id": ...}."""
    from db.owners import create_api_key, create_owner

    with Session() as s:
        owner = create_owner(s, name=f"{name}-{uuid.uuid4().hex[:6]}")
        return {"Authorization": f"Bearer {create_api_key(s, owner_id=owner.id)}", "owner_id": owner.id}


def auth(owner: dict) -> dict:
    return {"Authorization": owner["Authorization"]}


def png(w: int = 64, h: int = 48, color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def queued_messages(key_prefix: str, queue: str) -> list[dict]:
    """The Celery messages waiting in a queue, decoded (task name + args)."""
    r = redis.Redis.from_url(REDIS_URL)
    out = []
    for raw in r.lrange(f"{key_prefix}{queue}", 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"task": msg["headers"]["task"], "args": body[0], "id": msg["headers"]["id"]})
    return out


def db_counts(Session) -> dict[str, int]:
    with Session() as s:
        return {
            name: s.scalar(select(func.count()).select_from(table)) for name, table in Base.metadata.tables.items()
        }


def store_files(settings) -> list[str]:
    root = settings.resolved_artifact_dir
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def make_celery(broker_url: str, prefix: str) -> Celery:
    app = Celery("o1lora-api-tests", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": prefix},
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
        broker_connection_timeout=1,
        broker_connection_max_retries=0,
    )
    return app


def lora_safetensors(
    layout: str = "comfyui", rank: int = 4, layers: int = 2, alpha: float | None = 8.0, extra: dict | None = None
) -> bytes:
    """A small LoRA file in one of the layouts in the wild (zeros; only names and shapes matter to the API)."""
    import numpy as np
    from safetensors.numpy import save

    prefix, down, up = {
        "comfyui": ("diffusion_model.", "lora_A", "lora_B"),
        "peft": ("base_model.model.model.", "lora_A", "lora_B"),
        "kohya": ("diffusion_model.", "lora_down", "lora_up"),
    }[layout]
    tensors = {}
    for i in range(layers):
        stem = f"{prefix}language_model.layers.{i}.self_attn.q_proj"
        tensors[f"{stem}.{down}.weight"] = np.zeros((rank, 384), np.float32)  # q_proj of models/o1-shapes
        tensors[f"{stem}.{up}.weight"] = np.zeros((384, rank), np.float32)
        if alpha is not None and layout != "peft":
            tensors[f"{stem}.alpha"] = np.array(alpha, np.float32)
    tensors.update(extra or {})
    return save(tensors, metadata={"o1lora_test": "1"})
