"""docker-compose.yml and the Dockerfile, checked structurally (Docker itself cannot run here)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_their_commands():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "api", "worker-train", "worker-generate", "flower"}
    api_cmd = " ".join(services["api"]["command"])
    assert api_cmd.index("alembic upgrade head") < api_cmd.index(
        "uvicorn --factory api.main:create_app"
    )  # migrations first
    for name, queue in (("worker-train", "train"), ("worker-generate", "generate")):
        cmd = services[name]["command"]
        assert cmd[:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert cmd[cmd.index("-Q") + 1] == queue


def test_workers_reserve_a_gpu_and_share_the_artifacts_with_the_api():
    services = compose()["services"]
    for name in ("worker-train", "worker-generate"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["api"]
    mounts = {name: services[name]["volumes"] for name in ("api", "worker-train", "worker-generate")}
    for vols in mounts.values():
        assert "artifacts:/artifacts" in [v.split("#")[0].strip() for v in vols]
    assert "artifacts" in compose()["volumes"]
    for name in ("api", "worker-train", "worker-generate"):
        env = services[name]["environment"]
        assert env["O1LORA_ARTIFACT_DIR"] == "/artifacts"
        assert env["O1LORA_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["O1LORA_BROKER_URL"] == "redis://redis:6379/0"


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs():
    services = compose()["services"]
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], name
    for name in ("worker-train", "worker-generate"):
        deps = services[name]["depends_on"]
        assert {k: v["condition"] for k, v in deps.items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "api": "service_healthy",
        }
    assert set(services["api"]["depends_on"]) == {"postgres", "redis"}


def test_worker_healthcheck_module_and_env_example_exist():
    services = compose()["services"]
    assert services["worker-train"]["healthcheck"]["test"][-1] == "ops.health"
    assert (REPO / "worker" / "health.py").is_file()
    example = (REPO / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example  # compose refuses to start without it (`:?`)


def test_dockerfile_installs_torch_before_the_code_and_runs_unprivileged():
    lines = [
        ln.strip()
        for ln in (REPO / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11")
    torch = next(i for i, ln in enumerate(lines) if "pip install torch" in ln)
    copy_all = lines.index("COPY . .")
    assert torch < copy_all
    assert any(ln.startswith("USER ") and "root" not in ln for ln in lines[copy_all:])


def test_workers_run_without_celery_chatter_like_the_launchers_workers():
    # Gossip / mingle / event heartbeat: unused here, and a Redis loss made them log a traceback (issue 16).
    from ops.launcher import WORKER_FLAGS

    services = compose()["services"]
    for name in ("worker-train", "worker-generate"):
        assert set(WORKER_FLAGS) <= set(services[name]["command"]), name


def test_flower_is_optional_and_password_protected():
    flower = compose()["services"]["flower"]
    assert flower["profiles"] == ["flower"]  # `docker compose up` alone does not start it
    command = " ".join(flower["command"])
    assert "celery -A worker.celery_app flower" in command and "--basic-auth" in command
    assert any("[flower]" in ln for ln in (REPO / "Dockerfile").read_text().splitlines() if "pip install" in ln)
