"""The SSRF guard and the signatures, without servers: refusals with the allow flag off, and signatures an
independent Standard Webhooks verifier (the `standardwebhooks` package) accepts."""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.config.settings import WebhookSettings
from app.domain.webhooks import ssrf
from app.domain.webhooks.delivery import retry_delay
from app.domain.webhooks.signing import new_secret, secret_key, signed_headers


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.8.9.10:8080/hook",
        "http://10.0.0.5/hook",
        "https://10.255.1.1/hook",
        "http://172.16.3.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://0.0.0.0/hook",
        "http://[::]/hook",
        "http://224.0.0.1/hook",
        "http://100.64.0.1/hook",
    ],
)
async def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(ssrf.RefusedWebhookUrl):
        await ssrf.checked_target(url, allow_private=False)


async def test_the_allow_flag_lets_loopback_through() -> None:
    target = await ssrf.checked_target("http://127.0.0.1:9/hook", allow_private=True)
    assert str(target.url) == "http://127.0.0.1:9/hook"


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com/", "/relative"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ssrf.RefusedWebhookUrl):
        ssrf.parse_url(url)


@pytest.mark.parametrize("url", ["http://", "http://exa mple.com/", "http://example.com:99999/"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises((ssrf.InvalidWebhookUrl, ssrf.RefusedWebhookUrl)):
        ssrf.parse_url(url)


async def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(ssrf.RefusedWebhookUrl):
        await ssrf.checked_target("http://does-not-exist.invalid/hook", allow_private=False)


def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"):
        assert not ssrf.is_forbidden(ipaddress.ip_address(address))


def test_a_name_is_pinned_to_the_checked_address_and_keeps_host_and_sni() -> None:
    target = ssrf.pin(ssrf.parse_url("https://hooks.example.com:8443/x?y=1"), ipaddress.ip_address("93.184.215.14"))
    assert str(target.url) == "https://93.184.215.14:8443/x?y=1"
    assert target.headers == {"Host": "hooks.example.com:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example.com"}
    v6 = ssrf.pin(ssrf.parse_url("http://hooks.example.com/x"), ipaddress.ip_address("2606:4700::1"))
    assert str(v6.url) == "http://[2606:4700::1]/x"
    assert v6.headers == {"Host": "hooks.example.com"}


def test_signatures_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 32
    body = b'{"id":"evt_1","type":"run.completed","created_at":"2026-12-01T00:00:00Z","data":{"id":"r"}}'
    headers = signed_headers(secret, "evt_1", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["id"] == "evt_1"
    # Its own signature for the same message is ours, byte for byte.
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    assert Webhook(secret).sign("evt_1", ts, body.decode()) == headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    stale = signed_headers(secret, "evt_1", int((datetime.now(UTC) - timedelta(minutes=10)).timestamp()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)


def test_retry_delays_double_with_jitter_up_to_the_cap() -> None:
    cfg = WebhookSettings(retry_initial_delay=5.0, retry_max_delay=3600.0)
    for attempts, base in [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0)]:
        samples = [retry_delay(cfg, attempts) for _ in range(200)]
        assert all(0.8 * base <= s <= 1.2 * base for s in samples), (attempts, min(samples), max(samples))
        assert len(set(samples)) > 1  # jittered
    assert all(retry_delay(cfg, 30) <= 3600.0 for _ in range(100))
