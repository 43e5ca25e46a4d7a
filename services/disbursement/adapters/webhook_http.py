"""The HTTP transport of signed webhook deliveries, pinned to the addresses it checked (no DNS rebinding).

A merchant's webhook URL is checked at registration (`url_problem`) and again at every delivery: its host is
resolved and every address it resolves to must be one Floatbridge may call (`address_problem`: never
link-local/metadata, loopback or private ones only when the operator allows them). The connection then goes to
one of exactly those addresses: the URL is rewritten to the address, the Host header keeps the merchant's host
(and port) and TLS sends it as SNI and checks the certificate against it. Letting the HTTP client resolve the name
again would let a name with a short TTL answer a public address to the check and 127.0.0.1 or 169.254.169.254 to
the connection (DNS rebinding).

Redirects are not followed (a 3xx is a failed attempt) and the answer's body is never read.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.disbursement.domain.webhook_targets import TargetRefused, address_problem, parse_ip, url_problem
from services.disbursement.ports import WebhookTransport

# host, port -> the addresses it resolves to, in the resolver's order (literal addresses as text).
Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to for a TCP connection (getaddrinfo), duplicates removed."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """Where one delivery connects: `urls` (the URL with its host replaced by each checked address, in the
    resolver's order: the next one is tried when a connection is refused), the Host header to send and the TLS
    server name (None for http, or for a URL naming an address)."""

    urls: tuple[str, ...]
    host_header: str
    sni_hostname: str | None


def pin(url: str, allow_private: bool, resolve: Resolver = system_resolver) -> PinnedTarget:
    """Check `url` and resolve its host once; the target connects only to addresses that passed the check.

    Raises TargetRefused when the URL or any address its host resolves to may not be called, and the resolver's
    error (OSError, UnicodeError) when the host does not resolve (the attempt fails like any unreachable one)."""
    import httpx

    problem = url_problem(url, allow_private)
    if problem is not None:
        raise TargetRefused(f"webhook URL refused: {problem}")
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as the HTTP client would resolve it
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host_header = parsed.netloc.decode("ascii")
    literal = parse_ip(host)
    if literal is not None:  # checked by url_problem; connect to the address it spells, however it spells it
        return PinnedTarget((str(parsed.copy_with(host=str(literal))),), host_header, None)
    addresses = resolve(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    pinned: list[str] = []
    for text in addresses:
        ip = parse_ip(text)
        if ip is None:
            raise TargetRefused(f"webhook URL refused: {host} resolves to {text!r}, not an address")
        why = address_problem(ip, allow_private)
        if why is not None:
            raise TargetRefused(f"webhook URL refused: {host} resolves to {why}")
        if str(ip) not in pinned:
            pinned.append(str(ip))
    sni = host.rstrip(".") if parsed.scheme == "https" else None
    return PinnedTarget(tuple(str(parsed.copy_with(host=ip)) for ip in pinned), host_header, sni)


def pinned_transport(timeout: float, allow_private: bool = False,
                     resolve: Resolver = system_resolver) -> WebhookTransport:
    """POST a signed delivery to an address checked for this very delivery (see `pin`)."""
    import httpx

    client = httpx.Client(timeout=timeout, follow_redirects=False)

    def send(url: str, headers: Mapping[str, str], body: bytes) -> int:
        target = pin(url, allow_private, resolve)
        sent = {k: v for k, v in headers.items() if k.lower() != "host"} | {"Host": target.host_header}
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        for i, address_url in enumerate(target.urls):
            request = client.build_request("POST", address_url, content=body, headers=sent, extensions=extensions)
            try:
                resp = client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(target.urls) - 1:
                    raise
                continue
            try:
                return resp.status_code
            finally:
                resp.close()  # the body is never read
        raise AssertionError("unreachable")  # pin() returns at least one address

    return send
