"""The artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph...), for workers that share no filesystem.

    store = S3Store("o1lora", "prod", endpoint_url="http://minio:9000")   # or make_store(settings)
    store.put_file("loras/abc/lora.safetensors", path)                    # > s3_multipart_mib: multipart

Atomicity on S3: one PUT, or the completion of one multipart upload, makes a whole object visible at once, and a
failed multipart upload is aborted by boto3's managed transfer, so a key never holds half a file. A folder (a
checkpoint, a dataset, a PEFT folder) is many objects, so ``put_dir`` writes a manifest object last (every file's
size and sha256); ``fetch_dir`` fetches exactly what the manifest names and checks each file against it, and a
folder without one (written key by key) is read by listing. The rows point at a folder only once ``put_dir`` has
returned, so no row names a folder whose manifest is missing.

Every object carries its sha256 as metadata (``x-amz-meta-sha256``): the content id the workers' cache
(service/store_cache.py) keys its copies by. ``open`` gives a seekable reader of ranged GETs pinned to the
object's ETag: the API streams a download in 1 MiB pieces without ever holding the file, and a reader never
mixes two versions of an overwritten key. boto3 is imported here only, when an S3 store is made.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from service.store import ArtifactStore, check_key

# Written last by put_dir, hidden from list(): the folder's file list; its presence means the folder is whole.
MANIFEST = ".o1lora-manifest.json"
CHUNK = 1 << 20

_SESSION = None
_SESSION_LOCK = threading.Lock()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class S3Store(ArtifactStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        addressing_style: str = "auto",
        multipart_bytes: int = 64 << 20,
        parallel: int = 8,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if addressing_style == "auto" and endpoint_url:
            addressing_style = "path"  # MinIO and most self-hosted servers have no per-bucket host names
        self.bucket, self.prefix, self.parallel = bucket, prefix.strip("/"), parallel
        global _SESSION
        with (
            _SESSION_LOCK
        ):  # one boto3 session (it caches the loaded API models); not thread-safe, its clients are
            _SESSION = _SESSION or boto3.session.Session()
            self.client = _SESSION.client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None,
                config=Config(
                    s3={"addressing_style": addressing_style},
                    retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=10,  # a down store fails a health check in seconds, not boto's default minute
                    max_pool_connections=max(10, 2 * parallel),
                ),
            )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_bytes, multipart_chunksize=multipart_bytes, max_concurrency=4
        )

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    # Keys: the store's keys below the configured prefix of the bucket.
    def _k(self, key: str) -> str:
        key = check_key(key.rstrip("/"))
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unk(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def _head(self, key: str) -> dict:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            if _missing(e):
                raise FileNotFoundError(f"no stored file {key!r}") from None
            raise

    def _objects(self, prefix: str) -> list[dict]:
        """Every object at ``prefix`` itself or below ``prefix/`` (never ``prefix-other/...``)."""
        full = self._k(prefix)
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            found += [o for o in page.get("Contents", []) if o["Key"] == full or o["Key"].startswith(full + "/")]
        return found

    # Writes.
    def put_bytes(self, key: str, data: bytes) -> None:
        meta = {"sha256": hashlib.sha256(data).hexdigest()}
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, Metadata=meta)

    def put_file(self, key: str, src: Path) -> None:
        self._upload(key, src)

    def _upload(self, key: str, src: Path) -> str:
        """Upload one file (in parts above the multipart size); its sha256."""
        # The hash first: metadata is set when the upload starts and cannot be added once it completes.
        sha = sha256_file(src)
        self.client.upload_file(
            str(src), self.bucket, self._k(key), ExtraArgs={"Metadata": {"sha256": sha}}, Config=self.transfer
        )
        return sha

    def put_dir(self, prefix: str, src_dir: Path) -> list[str]:
        files = sorted(p for p in Path(src_dir).rglob("*") if p.is_file())
        rels = [p.relative_to(src_dir).as_posix() for p in files]
        keys = [f"{prefix}/{rel}" for rel in rels]
        for key in keys:
            check_key(key)  # every name refused before the first byte goes up
        # A folder being rewritten is not whole until its new manifest lands.
        self.client.delete_object(Bucket=self.bucket, Key=self._k(f"{prefix}/{MANIFEST}"))

        def put(item: tuple[str, Path]) -> dict:
            key, path = item
            return {"size": path.stat().st_size, "sha256": self._upload(key, path)}

        with ThreadPoolExecutor(self.parallel) as pool:
            entries = dict(zip(rels, pool.map(put, zip(keys, files))))
        self.put_bytes(f"{prefix}/{MANIFEST}", json.dumps({"files": entries}, sort_keys=True).encode())
        return keys

    # Reads.
    def open(self, key: str) -> BinaryIO:
        head = self._head(key)
        raw = _ObjectReader(self.client, self.bucket, self._k(key), head["ContentLength"], head["ETag"])
        return io.BufferedReader(raw, buffer_size=CHUNK)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except FileNotFoundError:
            return False

    def size(self, key: str) -> int:
        return self._head(key)["ContentLength"]

    def list(self, prefix: str) -> list[str]:
        keys = (self._unk(o["Key"]) for o in self._objects(prefix))
        return sorted(k for k in keys if k.rsplit("/", 1)[-1] != MANIFEST)

    def delete_prefix(self, prefix: str) -> None:
        objects = self._objects(prefix)
        # Manifests first, on their own (one DeleteObjects call has no order): from then on no reader takes the
        # folder for whole.
        for o in [o for o in objects if o["Key"].endswith("/" + MANIFEST)]:
            self.client.delete_object(Bucket=self.bucket, Key=o["Key"])
        objects = [o for o in objects if not o["Key"].endswith("/" + MANIFEST)]
        for i in range(0, len(objects), 1000):  # S3's most per DeleteObjects call
            batch = [{"Key": o["Key"]} for o in objects[i : i + 1000]]
            r = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise OSError(f"could not delete {e['Key']!r} from the store: {e.get('Code')} {e.get('Message')}")

    def manifest(self, prefix: str) -> dict | None:
        """The folder's manifest ({"files": {relative path: {"size", "sha256"}}}), or None without one."""
        try:
            with self.open(f"{prefix}/{MANIFEST}") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def fetch_dir(self, prefix: str, dest: Path) -> Path:
        dest = Path(dest)
        manifest = self.manifest(prefix)
        if manifest is not None:
            wanted = {rel: e["sha256"] for rel, e in manifest["files"].items()}
        else:
            wanted = {k[len(prefix) + 1 :]: None for k in self.list(prefix) if k != prefix}

        def get(item: tuple[str, str | None]) -> None:
            rel, sha = item
            out = dest / check_key(rel)
            out.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._k(f"{prefix}/{rel}"), str(out), Config=self.transfer)
            if sha is not None and sha256_file(out) != sha:
                raise OSError(f"stored file {prefix}/{rel} does not match its folder's manifest")

        dest.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.parallel) as pool:
            list(pool.map(get, wanted.items()))
        return dest

    def content_id(self, key: str) -> str:
        head = self._head(key)
        sha = head.get("Metadata", {}).get("sha256")
        return f"sha256-{sha}" if sha else f"etag-{head['ETag'].strip(chr(34))}-{head['ContentLength']}"

    def dir_content_id(self, prefix: str) -> str:
        manifest = self.manifest(prefix)
        if manifest is not None:
            text = json.dumps(manifest, sort_keys=True)
        else:  # a folder written key by key: its listing (names, sizes, ETags) stands for its content
            objects = self._objects(prefix)
            if not objects:
                raise FileNotFoundError(f"nothing stored under {prefix!r}")
            text = "\n".join(f"{self._unk(o['Key'])} {o['Size']} {o['ETag']}" for o in objects)
        return "dir-" + hashlib.sha256(text.encode()).hexdigest()

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


class _ObjectReader(io.RawIOBase):
    """A seekable read-only view of one object version: ranged GETs, each pinned to the ETag seen at open (a key
    overwritten mid-read fails with 412 rather than mixing two files). A read continues the open GET; a seek
    opens a new one at the next read, except a short skip forward, which is read through."""

    SKIP = CHUNK  # a gap this small is cheaper to read through than a new request

    def __init__(self, client, bucket: str, key: str, size: int, etag: str):
        self._client, self._bucket, self._key, self._size, self._etag = client, bucket, key, size, etag
        self._pos = 0
        self._body = None
        self._body_pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readall(self) -> bytes:
        # RawIOBase's would go in 8 KiB reads; f.read() of a whole object goes in 1 MiB ones.
        pieces = []
        while piece := self.read(CHUNK):
            pieces.append(piece)
        return b"".join(pieces)

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        for attempt in range(3):
            try:
                data = self._read(want)
                break
            except OSError:
                self._drop_body()  # a dropped connection: reopen at the same position
                if attempt == 2:
                    raise
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def _read(self, want: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        gap = self._pos - self._body_pos
        if self._body is None or not 0 <= gap <= self.SKIP:
            self._drop_body()
            try:
                r = self._client.get_object(
                    Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-", IfMatch=self._etag
                )
            except BotoCoreError as e:
                raise OSError(f"reading {self._key}: {e}") from e
            self._body, self._body_pos, gap = r["Body"], self._pos, 0
        try:
            while gap:
                skipped = len(self._body.read(min(gap, CHUNK)))
                if not skipped:
                    raise OSError(f"{self._key}: the stored object ended early")
                self._body_pos += skipped
                gap -= skipped
            data = self._body.read(want)
        except BotoCoreError as e:
            raise OSError(f"reading {self._key}: {e}") from e
        if not data:
            raise OSError(f"{self._key}: the stored object ended early")
        self._body_pos += len(data)
        return data

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def _missing(e) -> bool:
    code = str(e.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")
