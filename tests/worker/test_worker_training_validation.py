"""A training job with a separate validation dataset, run in-process on a tiny model: the row holds the
validation series, the live channel says each loss, and the LoRA row records which step it holds and keeps
the other one (issue 14)."""

from __future__ import annotations

import json

import redis
from safetensors import safe_open
from test_worker_training import new_job
from worker_helpers import put_dataset

from db.loras import get_lora
from db.owners import create_owner
from db.training import get_training
from service.events import channel
from worker import training


def test_validation_reaches_the_row_the_events_and_the_lora(tctx):
    c = tctx
    with c.sessions() as s:
        owner = create_owner(s, name="v1")
    ds, held = put_dataset(c, owner.id), put_dataset(c, owner.id, n=2)
    job = new_job(
        c,
        owner.id,
        ds.id,
        steps=4,
        learning_rate=0.05,
        validation_dataset_id=held.id,
        validation_every=1,
        validation_sigmas=2,
        validation_seeds=1,
        publish="best",
    )
    sub = redis.Redis.from_url(c.settings.resolved_redis_url).pubsub()
    sub.subscribe(channel("training", job.id))
    assert training.run_training(job.id, c) == "succeeded"
    events = []
    while (m := sub.get_message(timeout=0.2)) is not None:
        if m["type"] == "message":
            events.append(json.loads(m["data"]))
    sub.close()

    with c.sessions() as s:
        row = get_training(s, job_id=job.id)
        v = row.validation
        lora = get_lora(s, lora_id=row.lora.id)
    assert [p["step"] for p in v["series"]] == [1, 2, 3, 4] and v["images"] == 2 and v["baseline"] > 0
    losses = [p["loss"] for p in v["series"]]
    assert v["best_loss"] == min(losses) and v["series"][losses.index(min(losses))]["step"] == v["best_step"]
    said = [e["data"] for e in events if e["type"] == "validation"]
    assert [(d["step"], d["baseline"]) for d in said] == [
        (0, True),
        (1, False),
        (2, False),
        (3, False),
        (4, False),
    ]
    assert [d["loss"] for d in said[1:]] == losses
    progress = [e["data"] for e in events if e["type"] == "progress"]
    # a step reports its progress before it is validated: step 4's progress carries step 3's loss
    assert progress[-1]["step"] == 4 and progress[-1]["validation_loss"] == losses[-2]

    choices = lora.meta["checkpoints"]
    assert lora.meta["validation"]["series"] == v["series"] and choices["best"]["step"] == v["best_step"]
    with safe_open(str(c.store.local_path(lora.comfyui_key)), "pt") as f:
        meta = f.metadata()
    assert meta["o1lora.steps"] == str(v["best_step"]) and float(meta["o1lora.validation_loss"]) == v["best_loss"]
    if v["best_step"] != 4:  # the last step is kept beside the published best one
        assert choices["published"] == "best" and c.store.exists(choices["last"]["comfyui_key"])
    else:
        assert choices["published"] == "last" and "comfyui_key" not in choices["last"]
