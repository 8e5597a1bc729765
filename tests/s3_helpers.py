"""Helpers for the tests that run against a real S3 server (moto's, started by the `s3_server` fixture of
tests/conftest.py): the settings that point the service at a bucket, and a look at what the bucket holds."""

from __future__ import annotations

import uuid
from functools import lru_cache

# moto accepts any credentials; these only have to be the same everywhere.
ACCESS_KEY, SECRET_KEY, REGION = "o1lora-test", "o1lora-test-secret", "us-east-1"


def new_bucket(endpoint: str) -> str:
    """A fresh bucket of its own on the server (moto keeps every bucket of the session in memory)."""
    name = f"o1lora-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


@lru_cache
def client(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def store_settings(endpoint: str, bucket: str, prefix: str = "o1lora") -> dict:
    """Settings fields (Settings(**...) or model_copy(update=...)) of a service on that bucket."""
    return {
        "store_url": f"s3://{bucket}/{prefix}",
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY,
        "s3_secret_access_key": SECRET_KEY,
    }


def store_env(endpoint: str, bucket: str, prefix: str = "o1lora") -> dict[str, str]:
    """The same as O1LORA_* environment variables, for service processes."""
    return {f"O1LORA_{k.upper()}": v for k, v in store_settings(endpoint, bucket, prefix).items()}


def object_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object in the bucket under `prefix`, sorted."""
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def open_multipart_uploads(endpoint: str, bucket: str) -> list[str]:
    return [u["Key"] for u in client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
