"""Webhooks attacked: endpoints that point Floatbridge at its own network (SSRF), answer with a huge body or a
redirect, or hang and would hold every other merchant's deliveries."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services.disbursement.adapters.http_api import create_app
from services.disbursement.adapters.orm import webhook_deliveries
from services.disbursement.bootstrap import http_transport
from services.disbursement.domain.webhook_targets import TargetRefused, url_problem
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, limit, service_env

pytestmark = pytest.mark.unit

REFUSED_ALWAYS = [
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "http://[fe80::1]/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://0.0.0.0:8080/", "http://[::]/",
    "ftp://merchant.example/hooks", "file:///etc/passwd", "https://user:pw@merchant.example/hooks",
    "https://merchant.example:0/", "http:///nohost", "gopher://127.0.0.1:6379/",
]
REFUSED_UNLESS_PRIVATE_ALLOWED = [
    "http://localhost:8080/hooks", "http://api.localhost/", "http://127.0.0.1/", "http://127.1/",
    "http://2130706433/", "http://0x7f000001/", "http://[::1]/", "http://10.0.0.5/", "http://192.168.1.1/",
    "http://172.16.0.9/", "http://[fd00::1]/", "http://100.64.0.1/", "http://ｌｏｃａｌｈｏｓｔ/",
    "http://１２７.０.０.１/", "http://0177.0.0.1/", "http://[::ffff:7f00:1]/", "http://localhost./",
]


@pytest.mark.parametrize("url", REFUSED_ALWAYS + REFUSED_UNLESS_PRIVATE_ALLOWED)
def test_a_merchant_endpoint_inside_floatbridges_network_is_refused_at_registration(tmp_path: Any, url: str) -> None:
    env = service_env(DisbursementSettings(admin_api_key="admin-key-0123456789"),
                      db_url=f"sqlite:///{tmp_path}/d.db")
    with pytest.raises(TargetRefused):
        env["svc"].register_merchant("m-ssrf", url)
    answer = TestClient(create_app(env["svc"])).post(
        "/admin/merchants", headers={"Authorization": "Bearer admin-key-0123456789"},
        json={"merchant_id": "m-ssrf", "webhook_url": url})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_merchant"
    assert all(m["merchant_id"] != "m-ssrf" for m in env["svc"].list_merchants())


@pytest.mark.parametrize("url", REFUSED_UNLESS_PRIVATE_ALLOWED)
def test_a_local_stack_may_allow_private_endpoints_but_never_the_metadata_service(url: str) -> None:
    assert url_problem(url, allow_private=True) is None
    for bad in REFUSED_ALWAYS:
        assert url_problem(bad, allow_private=True) is not None, bad


def test_public_endpoints_are_accepted() -> None:
    for url in ("https://m1.example/hooks", "https://hooks.merchant.com.br:8443/fb?x=1", "http://8.8.8.8/"):
        assert url_problem(url, allow_private=False) is None, url


def test_a_name_resolving_to_a_private_address_is_refused_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "rebind.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    send = http_transport(1.0)
    with pytest.raises(TargetRefused, match="10.1.2.3"):
        send("https://rebind.example/hooks", {}, b"{}")


class _Endpoint(BaseHTTPRequestHandler):
    """A merchant endpoint: /huge answers 200 with 64 MiB, /redirect answers 302 to /target."""

    sent = 0
    hits: list[str] = []
    finished = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(64 << 20))
        self.end_headers()
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(64):
                self.wfile.write(chunk)
                type(self).sent += 1
        except OSError:
            pass  # the client hung up without reading the body
        finally:
            type(self).finished.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def endpoint() -> Iterator[str]:
    _Endpoint.sent, _Endpoint.hits, _Endpoint.finished = 0, [], threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_huge_answer_body_is_never_read(endpoint: str) -> None:
    send = http_transport(5.0, allow_private=True)
    assert send(endpoint + "/huge", {"content-type": "application/json"}, b"{}") == 200
    assert _Endpoint.finished.wait(30), "the endpoint is still writing its answer"
    assert _Endpoint.sent < 64, "the whole 64 MiB answer was read"


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(endpoint: str) -> None:
    send = http_transport(5.0, allow_private=True)
    assert send(endpoint + "/redirect", {}, b"{}") == 302
    assert _Endpoint.hits == ["/redirect"]


def test_a_merchant_endpoint_that_hangs_does_not_hold_other_merchants_deliveries(tmp_path: Any) -> None:
    env = service_env(db_url=f"sqlite:///{tmp_path}/d.db", webhook_url="https://m1.example/hooks")
    svc = env["svc"]
    svc.register_merchant("m2", "https://slow.example/hooks", "key-m2-0123456789abcdef")
    calls: list[str] = []

    def transport(url: str, headers: Any, body: bytes) -> int:
        calls.append(url)
        if "slow.example" in url:
            raise TimeoutError("read timed out")
        return 200

    svc.transport = transport
    for i in range(3):
        svc.handle(limit("m2", 100_000 + i, at=T0 + timedelta(minutes=i)))
    svc.handle(limit("m1", 100_000, at=T0 + timedelta(minutes=5)))
    assert svc.dispatch_webhooks(T0 + timedelta(minutes=10)) == 2  # one try at m2, then m1's delivery
    assert calls == ["https://slow.example/hooks", "https://m1.example/hooks"]
    with svc.engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.merchant_id, webhook_deliveries.c.state,
                                      webhook_deliveries.c.attempts).order_by(webhook_deliveries.c.id)).all()
    assert sorted(map(tuple, rows)) == [("m1", "delivered", 1), ("m2", "pending", 0), ("m2", "pending", 0),
                                        ("m2", "pending", 1)]


@pytest.mark.parametrize("secret", ["whsec_", "whsec_" + "QQ==", "whsec_" + "A" * 20, "whsec_" + "QUFB" * 30])
def test_a_webhook_secret_short_enough_to_guess_or_absurdly_long_is_refused(tmp_path: Any, secret: str) -> None:
    import base64

    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    with pytest.raises(ValueError, match="secret"):
        svc.register_merchant("m2", "https://m2.example/hooks", webhook_secret=secret)
    with pytest.raises(ValueError, match="secret"):
        svc.rotate_secret("m1", secret)
    good = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert svc.register_merchant("m2", "https://m2.example/hooks", webhook_secret=good) == good
