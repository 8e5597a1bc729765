"""Which artifact store the settings name: the S3 bucket of ``O1LORA_STORE_URL``, else the local folder.

    store = make_store(get_settings())    # what the API and every worker use

A module of its own so that service/store.py (the contract and the local store) and service/s3_store.py stay
apart, and boto3 is imported only when a bucket is named.
"""

from __future__ import annotations

from service.settings import Settings
from service.store import ArtifactStore, LocalStore


def make_store(settings: Settings) -> ArtifactStore:
    """The store the settings name: the S3 bucket of ``store_url``, else the local artifact folder."""
    location = settings.store_location
    if location is None:
        return LocalStore(settings.resolved_artifact_dir)
    from service.s3_store import S3Store  # boto3 only where an S3 store is used

    bucket, prefix = location
    return S3Store(
        bucket,
        prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        addressing_style=settings.s3_addressing_style,
        multipart_bytes=settings.s3_multipart_mib << 20,
    )
