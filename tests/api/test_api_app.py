"""The app as a whole: no torch in the API process, the embedded SQLite default works, OpenAPI documents every
field, and the owner command prints a working key.

    .venv/bin/python -m pytest tests/api/test_api_app.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SQLITE_SMOKE = r"""
import sys, io
from fastapi.testclient import TestClient
from PIL import Image
from api.main import create_app
from service.settings import Settings
from db.migrate import upgrade
from db.session import make_sessionmaker
from db.owners import create_owner, create_api_key
sys.path.insert(0, "tests/api")
from api_helpers import lora_safetensors

s = Settings(data_dir=sys.argv[1], dataset_min_side=16)
upgrade(s.resolved_database_url)
with make_sessionmaker(s.resolved_database_url)() as db:
    key = create_api_key(db, owner_id=create_owner(db, name="solo").id)
h = {"Authorization": f"Bearer {key}"}
buf = io.BytesIO(); Image.new("RGB", (64, 64)).save(buf, "PNG")
with TestClient(create_app(s)) as c:
    r = c.post("/v1/datasets", headers=h, files=[("files", ("a.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 201, r.text
    r = c.post("/v1/loras", headers=h, files={"file": ("l.safetensors", lora_safetensors(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    assert c.get("/v1/datasets", headers=h).json()["count"] == 1
assert "sqlite" in s.resolved_database_url
print("torch loaded:", "torch" in sys.modules)
"""


def test_api_on_embedded_sqlite_never_imports_torch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SQLITE_SMOKE, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch loaded: False" in out.stdout
    assert (tmp_path / "o1lora.db").is_file() and any((tmp_path / "artifacts" / "datasets").iterdir())


def test_openapi_describes_every_field(app):
    spec = app.openapi()
    missing = [
        f"{name}.{prop}"
        for name, schema in spec["components"]["schemas"].items()
        if not name.startswith(("HTTPValidationError", "ValidationError"))
        for prop, body in schema.get("properties", {}).items()
        if not body.get("description")
    ]
    assert missing == []
    params = [
        f"{path} {p['name']}"
        for path, ops in spec["paths"].items()
        for op in ops.values()
        for p in op.get("parameters", [])
        if p["in"] == "query" and not p.get("description")
    ]
    assert params == []


def test_create_owner_command_prints_a_key_that_works(tmp_path, settings, client):
    url = settings.resolved_database_url
    out = subprocess.run(
        [sys.executable, "-m", "db.create_owner", "carol-cli", "--database-url", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("o1l_")
    assert client.get("/v1/loras", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    again = subprocess.run(
        [sys.executable, "-m", "db.create_owner", "carol-cli", "--database-url", url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_ready_is_503_naming_the_dependency_that_is_down(settings, app):
    from fastapi.testclient import TestClient

    from api.main import create_app

    broken = settings.model_copy(
        update={
            "broker_url": "redis://127.0.0.1:1/0",
            "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none",
        }
    )
    with TestClient(create_app(broken, enqueuer=app.state.enqueuer)) as c:
        assert c.get("/health").status_code == 200  # liveness does not depend on them
        r = c.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    assert r.json()["checks"]["database"] != "ok" and r.json()["checks"]["broker"] != "ok"
