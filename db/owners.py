"""Owners and API keys. A key is shown once at creation; only its SHA-256 is stored.

Keys are 32 random bytes (base64url), so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import ApiKey, Owner, utcnow

KEY_PREFIX = "o1l_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_owner(session: Session, *, name: str) -> Owner:
    """A new owner; ValueError when the name is taken or empty."""
    name = name.strip()
    if not name:
        raise ValueError("owner name must not be empty")
    if session.scalar(select(Owner.id).where(Owner.name == name)):
        raise ValueError(f"owner {name!r} already exists")
    owner = Owner(name=name)
    session.add(owner)
    session.commit()
    return owner


def create_api_key(session: Session, *, owner_id: str) -> str:
    """A new key for the owner; returns the plaintext key (the only time it exists)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner_id=owner_id, key_hash=hash_key(key), prefix=key[:12]))
    session.commit()
    return key


def owner_for_key(session: Session, *, key: str) -> Owner | None:
    """The owner of a live (not revoked) key, or None."""
    return session.scalar(
        select(Owner)
        .join(ApiKey, ApiKey.owner_id == Owner.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


def revoke_api_keys(session: Session, *, owner_id: str, prefix: str) -> int:
    """Revoke the owner's live keys starting with ``prefix`` (as printed, e.g. "o1l_AbCd"); returns how many."""
    if len(prefix) < 8:
        raise ValueError("give at least the first 8 characters of the key")
    result = session.execute(
        update(ApiKey)
        .where(
            ApiKey.owner_id == owner_id,
            ApiKey.revoked_at.is_(None),
            ApiKey.prefix.startswith(prefix[:12], autoescape=True),
        )
        .values(revoked_at=utcnow())
    )
    session.commit()
    return result.rowcount
