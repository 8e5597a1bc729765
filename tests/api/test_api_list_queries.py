"""List routes load each page's related rows with the page: the SQL statements of one list request do not grow
with the page size (they did: two lazy loads, `previews` and `lora`, per listed training; one per generation).

    .venv/bin/python -m pytest tests/api/test_api_list_queries.py -q
"""

from __future__ import annotations

import contextlib

import pytest
from api_helpers import auth, owner_headers
from sqlalchemy import event

from db.generations import add_generation_image, claim_generation, create_generation, finish_generation
from db.training import add_preview, claim_training, create_training, finish_training

ROWS = 6


@contextlib.contextmanager
def counted(engine):
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture(scope="module")
def frank(Session):
    """An owner with ROWS finished trainings (2 previews + a LoRA each) and ROWS generations (2 images each)."""
    owner = owner_headers(Session, "frank")
    with Session() as s:
        for i in range(ROWS):
            job = create_training(
                s,
                owner_id=owner["owner_id"],
                dataset_id=None,
                name=f"t{i}",
                trigger="sks",
                params={},
                total_steps=2,
            )
            claim_training(s, job_id=job.id, worker_id="w")
            for step in (1, 2):
                add_preview(s, job_id=job.id, step=step, index=0, storage_key=f"trainings/{job.id}/{step}.png")
            finish_training(
                s,
                job_id=job.id,
                worker_id="w",
                peft_prefix=f"trainings/{job.id}/peft",
                comfyui_key=None,
                rank=4,
                alpha=4.0,
            )
            gen = create_generation(
                s, owner_id=owner["owner_id"], prompt="p", params={}, num_images=2, total_steps=2
            )
            claim_generation(s, job_id=gen.id, worker_id="g")
            for n in range(2):
                add_generation_image(
                    s,
                    job_id=gen.id,
                    index=n,
                    storage_key=f"generations/{gen.id}/{n}.png",
                    width=32,
                    height=32,
                    seed=n,
                )
            finish_generation(s, job_id=gen.id, worker_id="g")
    return owner


@pytest.mark.parametrize("route", ["trainings", "generations", "loras", "datasets"])
def test_statements_per_list_request_do_not_grow_with_the_page(client, app, frank, route):
    engine = app.state.sessions.kw["bind"]
    counts, pages = {}, {}
    for limit in (1, ROWS):
        with counted(engine) as statements:
            r = client.get(f"/v1/{route}?limit={limit}", headers=auth(frank))
        assert r.status_code == 200, r.text
        counts[limit], pages[limit] = len(statements), r.json()["data"]
    if route in ("trainings", "generations", "loras"):
        assert len(pages[ROWS]) == ROWS
    if route == "trainings":  # what the eager loads must deliver
        assert all(len(j["previews"]) == 2 and j["lora_id"] for j in pages[ROWS])
    if route == "generations":
        assert all(len(g["images"]) == 2 for g in pages[ROWS])
    print(f"\n{route}: statements per list request by page size {counts}")
    assert counts[ROWS] == counts[1], counts
