"""O1LoraClient: the public HTTP API of an o1lora service as Python methods (httpx, synchronous).

    from client import O1LoraClient
    with O1LoraClient("http://127.0.0.1:8000", api_key) as c:      # or O1LORA_URL / O1LORA_API_KEY
        ds = c.upload_dataset("./photos", resolution=512)
        job = c.create_training(ds["id"], "sks style", steps=1500)
        job = c.wait("training", job["id"], on_event=print)         # follows the SSE stream
        c.download_lora(job["lora_id"], ".", format="comfyui")

Every method returns the service's JSON as dicts (the shapes documented at /docs) and raises ApiError with
the service's own message and field when a request is refused, Unreachable when nothing answers.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import unquote

import httpx

from client.dataset_zip import zip_folder
from client.errors import ApiError, ClientError, Unreachable
from client.sse import Event, parse_events

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
COLLECTIONS = {
    "training": "/v1/trainings",
    "generation": "/v1/generations",
    "lora": "/v1/loras",
    "dataset": "/v1/datasets",
}
JOB_KINDS = ("training", "generation")  # the ones that run, stream events and cancel


class O1LoraClient:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get("O1LORA_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("O1LORA_API_KEY")
        if not key:
            raise ClientError(
                "no API key: pass --api-key or set O1LORA_API_KEY (`make serve` prints one and "
                "keeps it in data/api_key)"
            )
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "o1lora-client"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "O1LoraClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------------------

    def _unreachable(self, e: Exception) -> Unreachable:
        return Unreachable(
            f"cannot reach the o1lora service at {self.url} ({type(e).__name__}: {e}); "
            "check --url / O1LORA_URL and that the service runs"
        )

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r

    def _json(self, method: str, path: str, **kw) -> dict[str, Any]:
        return self.request(method, path, **kw).json()

    # ---- datasets -----------------------------------------------------------------------------------------

    def upload_dataset(
        self, path: str | Path, *, name: str | None = None, resolution: int | None = None
    ) -> dict[str, Any]:
        """Upload a folder (zipped on the fly) or a .zip; the answer carries the validation report."""
        path = Path(path)
        if path.is_dir():
            archive, temporary = zip_folder(path), True
        elif path.is_file() and path.suffix.lower() == ".zip":
            archive, temporary = path, False
        else:
            raise ClientError(f"{path} is neither a folder nor a .zip file")
        form = {"name": name or path.stem or path.resolve().name}
        if resolution is not None:
            form["resolution"] = str(resolution)
        try:
            with archive.open("rb") as f:
                return self._json(
                    "POST",
                    "/v1/datasets",
                    data=form,
                    files=[("files", (f"{path.stem or 'dataset'}.zip", f, "application/zip"))],
                )
        finally:
            if temporary:
                archive.unlink(missing_ok=True)

    def upload_image(self, path: str | Path) -> dict[str, Any]:
        """Upload one reference image (POST /v1/images); the answer carries its id."""
        path = Path(path)
        with path.open("rb") as f:
            return self._json("POST", "/v1/images", files=[("file", (path.name, f, "application/octet-stream"))])

    # ---- jobs -----------------------------------------------------------------------------------------------

    def create_training(self, dataset_id: str, trigger: str, **fields: Any) -> dict[str, Any]:
        """Queue a training; ``fields`` are TrainingCreate's (steps, rank, learning_rate, sample_prompts...)."""
        return self._json("POST", "/v1/trainings", json={"dataset_id": dataset_id, "trigger": trigger, **fields})

    def generate(self, prompt: str, *, loras: Iterable[tuple[str, float]] = (), **fields: Any) -> dict[str, Any]:
        """Queue a generation; ``loras`` are (id, scale) pairs, ``fields`` GenerationCreate's (width, seed...)."""
        body = {"prompt": prompt, "loras": [{"id": i, "scale": s} for i, s in loras], **fields}
        return self._json("POST", "/v1/generations", json=body)

    def training_presets(self) -> dict[str, Any]:
        """The service's named training recipes: name -> label, summary, the fields it sets."""
        return self._json("GET", "/v1/training-presets")

    def get(self, kind: str, item_id: str) -> dict[str, Any]:
        return self._json("GET", f"{COLLECTIONS[kind]}/{item_id}")

    def list(self, kind: str, *, limit: int = 20, offset: int = 0, status: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", COLLECTIONS[kind], params=params)

    def find(self, item_id: str, kinds: Iterable[str] = tuple(COLLECTIONS)) -> tuple[str, dict[str, Any]]:
        """(kind, body) of the id, whichever collection holds it (ids are unique across them)."""
        for kind in kinds:
            try:
                return kind, self.get(kind, item_id)
            except ApiError as e:
                if e.status not in (404, 422):  # 422: not a valid id for that collection
                    raise
        raise ApiError(404, "not_found", f"no {' / '.join(kinds)} of yours has the id {item_id}")

    def cancel(self, kind: str, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"{COLLECTIONS[kind]}/{job_id}/cancel")

    # ---- following a job ----------------------------------------------------------------------------------

    def events(self, kind: str, job_id: str, *, read_timeout: float = 120.0) -> Iterator[Event]:
        """One SSE connection: a snapshot, live events, and a final snapshot when the job ends."""
        timeout = httpx.Timeout(30.0, read=read_timeout)  # the service sends a keepalive every few seconds
        try:
            with self.http.stream("GET", f"{COLLECTIONS[kind]}/{job_id}/events", timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                yield from parse_events(r.iter_lines())
        except httpx.TransportError as e:
            raise self._unreachable(e) from None

    def follow(self, kind: str, job_id: str, *, retry_s: float = 2.0, max_retries: int = 10) -> Iterator[Event]:
        """Events until the job's terminal snapshot, reconnecting when the stream drops (each new stream
        starts with a snapshot, so nothing is missed for good). Closing the generator detaches; the job
        runs on regardless."""
        failures = 0
        while True:
            try:
                for event in self.events(kind, job_id):
                    failures = 0
                    yield event
                    if event.name == "snapshot" and event.data["status"] in TERMINAL:
                        return
                    if event.name == "error":  # e.g. the database blinked: the service asks to reconnect
                        break
                problem: ClientError = Unreachable(f"the event stream of {kind} {job_id} ended early")
            except Unreachable as e:
                problem = e
            except ApiError as e:
                if e.status != 503:
                    raise
                problem = e
            failures += 1
            if failures > max_retries:
                raise problem
            time.sleep(retry_s * min(failures, 5))

    def wait(
        self, kind: str, job_id: str, on_event: Callable[[Event], None] | None = None, **follow_options: Any
    ) -> dict[str, Any]:
        """Follow the job to its end; returns its final state (check ``status``: failed and canceled too)."""
        final = None
        for event in self.follow(kind, job_id, **follow_options):
            if on_event:
                on_event(event)
            if event.name == "snapshot":
                final = event.data
        return final

    # ---- files ----------------------------------------------------------------------------------------------

    def download_lora(
        self, lora_id: str, dest: str | Path = ".", *, format: str | None = None, dtype: str | None = None
    ) -> Path:
        """The LoRA file (comfyui / musubi / diffsynth safetensors, peft zip, original); ``dest`` is a file
        path or a folder (then the service's file name). Default format: the service's (comfyui first)."""
        params = {k: v for k, v in (("format", format), ("dtype", dtype)) if v}
        return self.download(f"/v1/loras/{lora_id}/file", dest, params=params)

    def download_image(self, generation_id: str, index: int, dest: str | Path = ".") -> Path:
        return self.download(f"/v1/generations/{generation_id}/images/{index}", dest)

    def download(self, path: str, dest: str | Path, *, params: dict[str, Any] | None = None) -> Path:
        """Stream one file of the API to ``dest`` (a folder: the name the service gives); written to a
        .part file first, so an interrupted download never leaves a truncated file under the real name.
        A ``dest`` ending in a slash is a folder, made if missing."""
        if isinstance(dest, str) and dest.endswith(("/", os.sep)):
            Path(dest).mkdir(parents=True, exist_ok=True)
        dest = Path(dest)
        try:
            with self.http.stream("GET", path, params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                if dest.is_dir():
                    dest = dest / _attachment_name(r.headers.get("content-disposition"), fallback=Path(path).name)
                part = dest.with_name(dest.name + ".part")
                try:
                    with part.open("wb") as f:
                        for block in r.iter_bytes(1 << 20):
                            f.write(block)
                    part.replace(dest)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        return dest


def _attachment_name(header: str | None, fallback: str) -> str:
    """The file name of a Content-Disposition header, reduced to a bare name (never a path)."""
    name = None
    if header:
        m = re.search(r"filename\*=(?:UTF-8|utf-8)''([^;]+)", header)
        if m:
            name = unquote(m.group(1))
        else:
            m = re.search(r'filename="?([^";]+)"?', header)
            name = m.group(1) if m else None
    name = Path((name or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else fallback
