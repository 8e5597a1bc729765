"""Which receivers may be called: public addresses only, unless private ones are allowed."""

from __future__ import annotations

import pytest

from webhooks.attempt import pinned
from webhooks.urls import WebhookUrlError, check_url, refused_reason


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.9", "private"),
        ("172.16.5.5", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "private"),
        ("100.64.0.1", "non-public"),
        ("224.0.0.1", "multicast"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_refused_addresses(address, reason):
    assert refused_reason(address) == reason


def test_check_url_resolves_and_refuses_private_unless_allowed():
    with pytest.raises(WebhookUrlError, match="loopback address"):
        check_url("http://localhost:9/hook", allow_private=False)
    assert "127.0.0.1" in check_url("http://localhost:9/hook", allow_private=True)
    assert check_url("https://8.8.8.8/hook", allow_private=False) == ["8.8.8.8"]
    with pytest.raises(WebhookUrlError, match="does not resolve"):
        check_url("http://no-such-host.invalid/", allow_private=True)


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://8.8.8.8/", "http"),
        ("http:///x", "host"),
        ("http://8.8.8.8:0/", "port 0"),
        ("http://8.8.8.8:99999/", "valid"),
        ("https://8.8.8.8/" + "a" * 2000, "2000"),
    ],
)
def test_bad_syntax(url, message):
    with pytest.raises(WebhookUrlError, match=message):
        check_url(url, allow_private=True)


def test_http_deliveries_go_to_the_checked_address_with_the_host_header_kept():
    assert pinned("http://hooks.example:8080/a?b=1", "93.184.216.34") == (
        "http://93.184.216.34:8080/a?b=1",
        {"host": "hooks.example:8080"},
    )
    assert pinned("http://hooks.example/a", "2001:db8::1")[0] == "http://[2001:db8::1]/a"
