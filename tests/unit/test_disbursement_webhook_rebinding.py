"""DNS rebinding on webhook delivery: a merchant's host answers one address to the check and another to the
connection (a short TTL). The delivery must connect to the address that was checked, keeping the merchant's host in
the Host header (and TLS server name). Resolver stubs stand in for DNS; the endpoints are local HTTP servers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.disbursement.adapters.webhook_http import pin
from services.disbursement.bootstrap import http_transport
from services.disbursement.domain.webhook_targets import TargetRefused

pytestmark = pytest.mark.unit

_real_getaddrinfo = socket.getaddrinfo


class _Hooks(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.hits.append((self.path, self.headers.get("host")))  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(address: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), _Hooks)
    server.hits = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def two_endpoints() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer, int]]:
    """The checked endpoint on 127.0.0.1 and the rebinding target on 127.0.0.2, on the same port."""
    checked = _serve("127.0.0.1", 0)
    port = checked.server_address[1]
    try:
        other = _serve("127.0.0.2", port)
    except OSError:
        checked.shutdown()
        checked.server_close()
        pytest.skip("cannot listen on 127.0.0.2")
    yield checked, other, port
    for server in (checked, other):
        server.shutdown()
        server.server_close()


def rebinding(first: str, then: str) -> tuple[Any, list[str]]:
    """A getaddrinfo stub: hooks.example answers `first` once, then `then` (TTL 0); literal addresses resolve
    to themselves, as the real resolver does."""
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "hooks.example":
            return _real_getaddrinfo(host, port, *args, **kwargs)
        asked.append(host)
        ip = first if len(asked) == 1 else then
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    return getaddrinfo, asked


def test_a_name_rebinding_after_the_check_is_delivered_to_the_address_checked_with_its_host_header(
        monkeypatch: pytest.MonkeyPatch, two_endpoints: tuple[Any, Any, int]) -> None:
    checked, other, port = two_endpoints
    stub, asked = rebinding("127.0.0.1", "127.0.0.2")
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    send = http_transport(5.0, allow_private=True)  # the test-time allowance: local receivers
    assert send(f"http://hooks.example:{port}/hooks", {"content-type": "application/json"}, b"{}") == 204
    assert checked.hits == [("/hooks", f"hooks.example:{port}")]
    assert other.hits == [], "the connection went to an address that was not checked"
    assert asked == ["hooks.example"], "the name is resolved once per delivery"


def test_a_public_name_rebinding_to_loopback_never_reaches_this_machine(
        monkeypatch: pytest.MonkeyPatch, two_endpoints: tuple[Any, Any, int]) -> None:
    checked, _, port = two_endpoints
    stub, _ = rebinding("8.8.8.8", "127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    send = http_transport(1.0)
    with contextlib.suppress(Exception):  # 8.8.8.8 on that port is unreachable from here: a failed attempt
        send(f"http://hooks.example:{port}/hooks", {}, b"{}")
    assert checked.hits == [], "a delivery checked against a public address was sent to 127.0.0.1"


def test_a_delivery_is_pinned_to_the_checked_addresses_with_host_and_tls_name_kept() -> None:
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    target = pin("https://Hooks.Example:8443/fb?x=1", False, resolve)
    assert calls == [("hooks.example", 8443)]
    assert target.urls == ("https://93.184.216.34:8443/fb?x=1", "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/fb?x=1")
    assert target.host_header == "hooks.example:8443"
    assert target.sni_hostname == "hooks.example"
    plain = pin("http://hooks.example/h", False, lambda host, port: ["93.184.216.34"])
    assert (plain.urls, plain.host_header, plain.sni_hostname) == (("http://93.184.216.34/h",), "hooks.example", None)


@pytest.mark.parametrize("answers", [["93.184.216.34", "10.0.0.7"], ["169.254.169.254"], ["127.0.0.1"], ["::1"]])
def test_a_name_with_any_address_that_may_not_be_called_is_refused(answers: list[str]) -> None:
    with pytest.raises(TargetRefused):
        pin("https://hooks.example/h", False, lambda host, port: answers)


def test_the_private_allowance_still_refuses_the_metadata_service_and_lets_local_receivers_through() -> None:
    assert pin("http://receiver.local:9000/h", True, lambda host, port: ["127.0.0.1"]).urls == \
        ("http://127.0.0.1:9000/h",)
    with pytest.raises(TargetRefused, match="link-local"):
        pin("http://receiver.local:9000/h", True, lambda host, port: ["169.254.169.254"])


def test_a_literal_address_in_a_legacy_spelling_is_connected_to_as_the_address_it_was_checked_as() -> None:
    def never(host: str, port: int) -> list[str]:
        raise AssertionError("a literal address is not resolved")

    assert pin("http://0x7f.1:8080/h", True, never).urls == ("http://127.0.0.1:8080/h",)
    with pytest.raises(TargetRefused):
        pin("http://0x7f.1:8080/h", False, never)
