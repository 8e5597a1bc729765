"""Standard Webhooks signatures: the spec's own example, and what a receiver must refuse."""

from __future__ import annotations

import base64

import pytest

from webhooks.signing import SignatureError, headers, key_of, new_secret, sign, verify

# The example of the Standard Webhooks specification: secret, id, timestamp, body -> signature.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specs_example_signs_the_same():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_a_new_secret_is_whsec_and_32_random_bytes():
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(key_of(a)) == 32 and base64.b64encode(key_of(a)).decode() == a[len("whsec_") :]


def test_verify_accepts_the_headers_and_refuses_tampering_other_secrets_and_old_timestamps():
    secret = new_secret()
    body = '{"type":"training.completed"}'
    h = headers(secret, "msg_1", body, now=1_000_000)
    verify(secret, h, body, now=1_000_010)
    with pytest.raises(SignatureError, match="matches"):
        verify(secret, h, body.replace("completed", "start"), now=1_000_010)
    with pytest.raises(SignatureError, match="matches"):
        verify(new_secret(), h, body, now=1_000_010)
    with pytest.raises(SignatureError, match="too far"):
        verify(secret, h, body, now=1_000_000 + 3600)
    with pytest.raises(SignatureError, match="missing"):
        verify(secret, {k: v for k, v in h.items() if k != "webhook-id"}, body)
    # Several signatures (a secret being rotated): any one matching is enough.
    verify(secret, {**h, "webhook-signature": "v1,bm9wZQ== " + h["webhook-signature"]}, body, now=1_000_000)
