"""docker-compose.yml and the Dockerfile, checked structurally (Docker itself cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_their_commands():
    services = compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "minio",
        "minio-bucket",
        "api",
        "worker-train",
        "worker-generate",
        "flower",
        "worker-remote",
    }
    api_cmd = " ".join(services["api"]["command"])
    assert api_cmd.index("alembic upgrade head") < api_cmd.index(
        "uvicorn --factory api.main:create_app"
    )  # migrations first
    for name, queue in (("worker-train", "train"), ("worker-generate", "generate")):
        cmd = services[name]["command"]
        assert cmd[:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert cmd[cmd.index("-Q") + 1] == queue


def test_workers_reserve_a_gpu_and_share_the_minio_bucket_with_the_api():
    services = compose()["services"]
    for name in ("worker-train", "worker-generate", "worker-remote"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["api"]
    for name in ("api", "worker-train", "worker-generate"):
        env = services[name]["environment"]
        assert env["O1LORA_STORE_URL"] == "s3://${O1LORA_S3_BUCKET:-o1lora}"
        assert env["O1LORA_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["O1LORA_S3_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?")  # MinIO's own key
        assert env["O1LORA_DATABASE_URL"].startswith("postgresql+psycopg://")
        for url in ("O1LORA_BROKER_URL", "O1LORA_REDIS_URL"):  # Redis asks for a password
            assert env[url] == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"
        assert "O1LORA_ARTIFACT_DIR" not in env  # no shared folder any more
        assert services[name]["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}
    for name in ("worker-train", "worker-generate", "worker-remote"):
        assert "worker-cache:/cache" in [v.split("#")[0].strip() for v in services[name]["volumes"]]
        assert services[name]["environment"]["O1LORA_STORE_CACHE_DIR"] == "/cache"
    assert {"miniodata", "worker-cache"} <= set(compose()["volumes"]) and "artifacts" not in compose()["volumes"]


def test_minio_is_the_store_and_its_bucket_is_made_before_the_services_start():
    services = compose()["services"]
    minio, bucket = services["minio"], services["minio-bucket"]
    assert minio["command"][:2] == ["server", "/data"] and "miniodata:/data" in minio["volumes"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    script = bucket["entrypoint"][-1]
    assert "mc mb --ignore-existing" in script and "$$O1LORA_S3_BUCKET" in script  # the bucket the URL names
    assert bucket["environment"]["O1LORA_S3_BUCKET"] == "${O1LORA_S3_BUCKET:-o1lora}"
    # PostgreSQL, Redis and S3 reach other machines only on the address the operator names (default: none).
    for name, port in (("postgres", 5432), ("redis", 6379), ("minio", 9000)):
        assert f"${{O1LORA_PUBLISH_ADDR:-127.0.0.1}}:{port}:{port}" in [
            p.split("#")[0].strip() for p in services[name]["ports"]
        ]


def test_the_remote_worker_profile_needs_only_the_addresses_of_db_redis_and_the_bucket():
    remote = compose()["services"]["worker-remote"]
    assert remote["profiles"] == ["remote-worker"]  # `docker compose up` alone does not start it
    assert "depends_on" not in remote  # nothing of this host: it runs on another machine
    assert remote["env_file"] == ".env" and set(remote["environment"]) == {
        "O1LORA_ENV",
        "O1LORA_DATA_DIR",
        "O1LORA_STORE_CACHE_DIR",
        "O1LORA_MODEL_PATH",
    }  # the addresses come from that machine's .env, which .env.example shows
    cmd = remote["command"]
    assert cmd[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert cmd[cmd.index("-Q") + 1] == "${O1LORA_WORKER_QUEUES:-train,generate}"
    example = (REPO / ".env.example").read_text()
    for name in (
        "O1LORA_DATABASE_URL",
        "O1LORA_BROKER_URL",
        "O1LORA_STORE_URL",
        "O1LORA_S3_ENDPOINT_URL",
        "O1LORA_S3_ACCESS_KEY_ID",
        "O1LORA_S3_SECRET_ACCESS_KEY",
    ):
        assert f"# {name}=" in example, name


# O1LORA_* names that only docker compose reads (substitutions in docker-compose.yml), not the service.
COMPOSE_ONLY = {
    "O1LORA_MODELS_DIR",
    "O1LORA_MODEL_NAME",
    "O1LORA_PORT",
    "O1LORA_FLOWER_PORT",
    "O1LORA_S3_BUCKET",
    "O1LORA_PUBLISH_ADDR",
    "O1LORA_WORKER_QUEUES",
    "O1LORA_MINIO_CONSOLE_PORT",
}


def test_every_o1lora_name_in_compose_and_env_example_is_a_setting_or_a_compose_variable():
    """A misspelt O1LORA_ name would be ignored silently (Settings ignores unknown names): none may be."""
    settings = {f"O1LORA_{name.upper()}" for name in Settings.model_fields}
    text = (REPO / "docker-compose.yml").read_text()
    substituted = set(re.findall(r"\$\{(O1LORA_\w+)", text))
    assert substituted <= COMPOSE_ONLY | settings
    for name, svc in compose()["services"].items():
        for var in svc.get("environment", {}):
            if var.startswith("O1LORA_") and name != "minio-bucket":
                assert var in settings, f"{name}: {var} is not a setting"
    example = set(re.findall(r"^#? ?(O1LORA_\w+)=", (REPO / ".env.example").read_text(), re.M))
    assert example <= settings | COMPOSE_ONLY, example - settings - COMPOSE_ONLY
    assert COMPOSE_ONLY - {"O1LORA_MINIO_CONSOLE_PORT"} <= substituted | example


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs():
    services = compose()["services"]
    for name, svc in services.items():
        if name != "minio-bucket":  # a one-shot: the others wait for it to have exited with 0
            assert svc["healthcheck"]["test"], name
    for name in ("worker-train", "worker-generate"):
        deps = services[name]["depends_on"]
        assert {k: v["condition"] for k, v in deps.items()} == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "minio-bucket": "service_completed_successfully",
            "api": "service_healthy",
        }
    assert set(services["api"]["depends_on"]) == {"postgres", "redis", "minio-bucket"}


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


def _compose_shell(text: str) -> str:
    """A compose string as the container's shell gets it ($$ is compose's escape for a literal $)."""
    return text.replace("$$", "$")


def test_compose_redis_asks_for_its_password_and_the_health_check_gives_it(tmp_path):
    """compose's own Redis command and health check, run against a real redis-server on a spare port: a
    client without the password is refused, the check passes with it and fails with a wrong one, and the
    password is not on the server's command line (other users of the host can read that)."""
    import os
    import shutil
    import subprocess
    import time

    import redis

    from ops.broker import free_port

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run starts one; the tests need the binary)")
    svc = compose()["services"]["redis"]
    assert svc["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    port, password = free_port(), "Xk9-long_secret"
    script = _compose_shell(svc["command"][2]).replace(
        "--appendonly yes", f"--port {port} --save '' --dir {tmp_path}"
    )
    env = {**os.environ, "REDIS_PASSWORD": password}
    server = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, password=password).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "compose's redis command did not start a server"
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        check = _compose_shell(svc["healthcheck"]["test"][1]).replace("redis-cli", f"redis-cli -p {port}")
        assert subprocess.run(["sh", "-c", check], env=env).returncode == 0
        wrong = {**env, "REDIS_PASSWORD": "wrong"}
        assert subprocess.run(["sh", "-c", check], env=wrong, stderr=subprocess.DEVNULL).returncode != 0
        for proc in Path("/proc").glob("[0-9]*"):  # the shell and the server it started, and anything else
            try:
                assert password.encode() not in (proc / "cmdline").read_bytes(), proc
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass  # a process that ended meanwhile
    finally:
        server.terminate()
        server.wait(timeout=10)
