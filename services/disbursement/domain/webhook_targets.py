"""Which webhook endpoints Floatbridge will call: no server-side request forgery through a merchant's URL.

A merchant's endpoint is an address on the public internet. An endpoint that names (or resolves to) the
machine itself, the cloud's metadata service or a private network would let whoever registers it make
Floatbridge's servers call inside their own network. Link-local addresses (the metadata service lives at
169.254.169.254), unspecified, multicast and reserved addresses are never called; loopback and private
networks only when the operator allows them (a local stack whose merchants' receivers run on 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from urllib.parse import urlsplit

# Names that reach the machine itself or a cloud metadata service whatever the resolver says.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_METADATA_NAMES = ("metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                   "instance-data.ec2.internal")
# Legacy IPv4 spellings the C resolver still accepts: 2130706433, 0x7f.1, 127.1, 0177.0.0.1.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class TargetRefused(ValueError):
    """A webhook URL Floatbridge will not call."""


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally (every spelling a resolver would take), or None for a name."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why Floatbridge must not call this address, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_problem(mapped, allow_private)
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata services live there)"
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if ip.is_loopback:
        return None if allow_private else f"{ip} is this machine (loopback)"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return f"{ip} is a reserved address"
    if ip.is_private or not ip.is_global:
        return None if allow_private else f"{ip} is a private address"
    return None


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why a webhook URL is refused at registration, or None. Names are checked again, resolved, when called."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "the webhook URL must be http or https"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "the webhook URL must not carry credentials"
    # NFKC as IDNA maps names before resolving them: "ｌｏｃａｌｈｏｓｔ" and "１２７.０.０.１" are localhost.
    host = unicodedata.normalize("NFKC", parts.hostname or "").rstrip(".").lower()
    if not host:
        return "the webhook URL has no host"
    if port == 0:
        return "the webhook URL has port 0"
    if host in _METADATA_NAMES:
        return f"{host} is a cloud metadata service"
    ip = parse_ip(host)
    if ip is not None:
        return address_problem(ip, allow_private)
    if not allow_private and (host in _LOCAL_NAMES or host.endswith(".localhost")):
        return f"{host} is this machine"
    return None
