"""What one API process, one PostgreSQL and one Redis carry: jobs created per second, status polls per second and
concurrent SSE streams, over loopback, in a bounded run (about 80 s after start-up; the 1000-stream phase waits
for its streams to connect).

    nice python bench/load_api.py                      # PostgreSQL 127.0.0.1:5432 (trust), Redis 127.0.0.1:6379
    nice python bench/load_api.py --json runs/load.json --create-s 15 --poll-s 15 --streams 100,400,1000

The service is started as the end-to-end tests start it (tests/e2e/conftest.py): a throwaway PostgreSQL
database, migrated; Redis database 13 under a key prefix of this run; one uvicorn API process (ops.launcher).
No worker runs: the jobs stay queued, so what is measured is the control plane (HTTP, the database, the broker
message), not the GPUs. The per-owner active-job limits are off (0) so that one owner can queue thousands.

Phases, one after the other:
  create  --concurrency clients POST /v1/trainings in a loop for --create-s seconds (row + Redis message)
  poll    --concurrency clients GET /v1/trainings/{id} of the created jobs for --poll-s seconds
  sse     for each count in --streams: that many GET /v1/trainings/{id}/events held open at once for
          --hold-s seconds while 8 clients poll; how many got their first event, how fast, and the poll
          latency meanwhile; the API process's CPU and memory, PostgreSQL connections, Redis clients
The load generator runs on the same machine (a shared 2-core box when this was written): every rate is a lower
bound of what the API alone would do. Results: a table on stdout, every number in --json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REDIS = "redis://127.0.0.1:6379/13"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class ProcStat:
    """CPU seconds and resident memory of one process, from /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid, self.tick = pid, os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


async def loop_clients(n: int, seconds: float, call) -> dict:
    """n clients calling `call()` back to back for `seconds`; counts, statuses and latencies."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def client():
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                code = str(await call())
            except httpx.HTTPError as e:
                code = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n)))
    wall = time.perf_counter() - t0
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    return {
        "clients": n,
        "seconds": wall,
        "requests": len(latencies),
        "ok": ok,
        "ok_per_s": ok / wall,
        "statuses": statuses,
        "p50_ms": 1e3 * percentile(latencies, 0.5),
        "p95_ms": 1e3 * percentile(latencies, 0.95),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
    }


async def hold_streams(
    base: str, key: str, ids: list[str], n: int, hold_s: float, http: httpx.AsyncClient, api: ProcStat, counts
):
    """n SSE streams open at once for hold_s seconds, 8 pollers meanwhile; the API's CPU share, PostgreSQL
    connections and Redis clients while they are all open."""
    first: list[float] = []
    events = {"n": 0}
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=30, read=hold_s + 30, write=30, pool=30)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=timeout
    ) as sse:

        async def stream(job_id: str, until: float):
            t0 = time.perf_counter()
            try:
                async with sse.stream("GET", f"/v1/trainings/{job_id}/events") as r:
                    if r.status_code != 200:
                        failures[str(r.status_code)] = failures.get(str(r.status_code), 0) + 1
                        return
                    got_first = False
                    async for line in r.aiter_lines():
                        if line.startswith("event:"):
                            events["n"] += 1
                            if not got_first:
                                first.append(time.perf_counter() - t0)
                                got_first = True
                        if time.monotonic() > until:
                            return
            except httpx.HTTPError as e:
                failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1

        until = time.monotonic() + hold_s
        tasks = [asyncio.create_task(stream(ids[i % len(ids)], until)) for i in range(n)]
        await asyncio.sleep(min(2.0, hold_s / 3))  # let them connect, then poll beside them
        cpu0, t0, c0 = api.cpu_s(), time.monotonic(), counts()
        polls = await loop_clients(
            8,
            max(1.0, until - time.monotonic() - 0.5),
            lambda: _status(http.get(f"/v1/trainings/{random.choice(ids)}")),
        )
        c1, seconds = counts(), time.monotonic() - t0
        during = {
            "api_cpu_share": (api.cpu_s() - cpu0) / seconds,
            "pg_cpu_share": pg_cpu_between(c0, c1) / seconds,
            "pg_connections": c1["pg_connections"],
            "redis_clients": c1["redis_clients"],
        }
        # a stream ends at its next line after `until` (a keepalive every sse_recheck_s at the latest)
        done, pending = await asyncio.wait(tasks, timeout=15)
        for t in pending:
            t.cancel()
    return {
        "streams": n,
        "got_first_event": len(first),
        "first_event_p50_ms": 1e3 * (percentile(first, 0.5) or 0),
        "first_event_p99_ms": 1e3 * (percentile(first, 0.99) or 0),
        "events": events["n"],
        "failures": failures,
        "polls_meanwhile": polls,
        **during,
    }


async def _status(coro) -> int:
    return (await coro).status_code


def dataset_zip() -> bytes:
    """Four small PNGs with captions (the smallest dataset the API accepts as training data)."""
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(4):
            img = io.BytesIO()
            Image.new("RGB", (256, 256), (60 * i, 120, 200 - 40 * i)).save(img, format="PNG")
            z.writestr(f"{i}.png", img.getvalue())
            z.writestr(f"{i}.txt", f"a flat colour field number {i}")
    return buf.getvalue()


async def measure(base: str, key: str, a, api: ProcStat, counts) -> dict:
    out: dict = {}
    limits = httpx.Limits(max_connections=a.concurrency + 16)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as http:
        r = await http.post(
            "/v1/datasets",
            files={"files": ("d.zip", dataset_zip(), "application/zip")},
            data={"resolution": "256"},
        )
        r.raise_for_status()
        dataset = r.json()["id"]
        ids: list[str] = []

        async def create():
            r = await http.post(
                "/v1/trainings", json={"dataset_id": dataset, "trigger": "load test", "steps": 1000}
            )
            if r.status_code == 202:
                ids.append(r.json()["id"])
            elif "first_error" not in out:
                out["first_error"] = r.text[:500]
            return r.status_code

        cpu0, pg0 = api.cpu_s(), counts()
        out["create"] = await loop_clients(a.concurrency, a.create_s, create)
        out["create"]["api_cpu_s"] = api.cpu_s() - cpu0
        out["create"]["pg_cpu_s"] = pg_cpu_between(pg0, counts())
        print(f"create: {out['create']['ok_per_s']:.1f}/s", flush=True)
        if not ids:
            raise RuntimeError(f"no job was created: {out['create']['statuses']}: {out.get('first_error')}")

        cpu0, pg0 = api.cpu_s(), counts()
        out["poll"] = await loop_clients(
            a.concurrency, a.poll_s, lambda: _status(http.get(f"/v1/trainings/{random.choice(ids)}"))
        )
        out["poll"]["api_cpu_s"] = api.cpu_s() - cpu0
        out["poll"]["pg_cpu_s"] = pg_cpu_between(pg0, counts())
        print(f"poll: {out['poll']['ok_per_s']:.1f}/s", flush=True)

        out["sse"] = []
        for n in a.streams:
            row = await hold_streams(base, key, ids, n, a.hold_s, http, api, counts)
            row["api_rss_mib"] = api.rss_mib()
            out["sse"].append(row)
            print(f"sse {n}: {row['got_first_event']} streams got their snapshot", flush=True)
            await asyncio.sleep(1)
        out["jobs_created"] = len(ids)
    return out


def counts_of(db_url: str, redis_url: str):
    """() -> PostgreSQL connections to the run's database and Redis' connected clients, right now."""
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(db_url).database
    engine = create_engine(db_url, pool_size=1)
    r = redis.Redis.from_url(redis_url)

    def counts() -> dict:
        with engine.connect() as c:
            pids = c.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                {"n": name},
            ).scalars()
            pids = list(pids)
        return {
            "pg_connections": len(pids),
            "pg_backend_cpu_s": {p: _cpu_or_zero(p) for p in pids},  # PostgreSQL on this machine: one process each
            "redis_clients": int(r.info("clients")["connected_clients"]),
        }

    return counts


def _cpu_or_zero(pid: int) -> float:
    try:
        return ProcStat(pid).cpu_s()
    except OSError:  # another machine's PostgreSQL, or a backend that just ended
        return 0.0


def pg_cpu_between(before: dict, after: dict) -> float:
    """CPU seconds the run's PostgreSQL backends used between two counts() (backends that came and went between
    them are missed: the API's pool keeps its connections)."""
    a, b = before["pg_backend_cpu_s"], after["pg_backend_cpu_s"]
    return sum(v - a.get(p, 0.0) for p, v in b.items())


def print_table(res: dict, machine: str) -> None:
    c, p = res["create"], res["poll"]
    print(f"\nmachine: {machine}")
    print(
        "| phase | clients | ok/s | p50 ms | p99 ms | errors | API CPU ms per request | PostgreSQL CPU ms per request |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for name, row in (("create training", c), ("status poll", p)):
        errors = {k: v for k, v in row["statuses"].items() if not k.startswith("2")}
        n = max(1, row["requests"])
        print(
            f"| {name} | {row['clients']} | {row['ok_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
            f"{errors or '-'} | {1000 * row['api_cpu_s'] / n:.1f} | {1000 * row['pg_cpu_s'] / n:.2f} |"
        )
    print(
        "\n| SSE streams | got snapshot | first event p50 / p99 ms | polls/s beside them | poll p99 ms | "
        "API CPU % | PostgreSQL CPU % | API RSS MiB | PG conns | Redis clients | failures |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in res["sse"]:
        pm = row["polls_meanwhile"]
        cpu = 100 * row["api_cpu_share"]
        print(
            f"| {row['streams']} | {row['got_first_event']} | {row['first_event_p50_ms']:.0f} / "
            f"{row['first_event_p99_ms']:.0f} | {pm['ok_per_s']:.1f} | {pm['p99_ms']:.0f} | {cpu:.0f} | "
            f"{100 * row['pg_cpu_share']:.0f} | "
            f"{row['api_rss_mib']:.0f} | {row['pg_connections']} | {row['redis_clients']} | "
            f"{row['failures'] or '-'} |"
        )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--create-s", type=float, default=10)
    ap.add_argument("--poll-s", type=float, default=10)
    ap.add_argument("--streams", default="100,300,1000", help="SSE stream counts, one phase each")
    ap.add_argument("--hold-s", type=float, default=8)
    ap.add_argument("--sse-recheck-s", type=float, default=5.0, help="the API's O1LORA_SSE_RECHECK_S")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.streams = [int(x) for x in a.streams.split(",") if x.strip()]

    import platform
    import tempfile

    import redis

    from db.migrate import upgrade
    from db.owners import create_api_key, create_owner
    from db.session import make_sessionmaker
    from db.testing import temporary_postgres
    from ops.broker import free_port
    from ops.launcher import Launcher, wait_http

    machine = f"{platform.node()}, {os.cpu_count()} CPU cores (shared), load average {os.getloadavg()[0]:.1f}"
    prefix = f"o1lora-load-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp, temporary_postgres() as db_url:
        upgrade(db_url)
        sessions = make_sessionmaker(db_url)
        with sessions() as s:
            key = create_api_key(s, owner_id=create_owner(s, name="load").id)
        env = {
            "O1LORA_DATABASE_URL": db_url,
            "O1LORA_BROKER_URL": REDIS,
            "O1LORA_REDIS_URL": REDIS,
            "O1LORA_BROKER_KEY_PREFIX": prefix,
            "O1LORA_DATA_DIR": str(Path(tmp) / "data"),
            "O1LORA_MAX_ACTIVE_TRAININGS": "0",
            "O1LORA_MAX_ACTIVE_GENERATIONS": "0",
            "O1LORA_SSE_RECHECK_S": str(a.sse_recheck_s),
        }
        launcher = Launcher(env, log_dir=Path(tmp) / "logs")
        port = free_port()
        try:
            proc = launcher.start_api(port=port)
            wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
            t0 = time.monotonic()
            res = asyncio.run(
                measure(f"http://127.0.0.1:{port}", key, a, ProcStat(proc.pid), counts_of(db_url, REDIS))
            )
            res["measured_s"] = time.monotonic() - t0
        finally:
            log_tail = launcher.log("api")[-4000:] if "api" in launcher.procs else ""
            launcher.stop_all()
            sessions.kw["bind"].dispose()
            r = redis.Redis.from_url(REDIS)
            for k in r.scan_iter(match=prefix + "*"):
                r.delete(k)
    res.update(machine=machine, args={k: v for k, v in vars(a).items() if k != "json"}, api_log_tail=log_tail)
    print_table(res, machine)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
