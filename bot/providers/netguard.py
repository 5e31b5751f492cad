"""Where the providers' HTTP session may connect: public addresses only, for URLs the bot did not build.

A provider's answer can name any URL (`outputs`, `temporaryUrl`, a JSON `url`, a redirect's
`Location`). Fetching one blindly lets whoever controls that answer make the bot read its own
loopback, the LAN or a cloud metadata service and post the result to Discord (server-side request
forgery). The rule, applied by `bot.providers.http` on every hop it follows:

* http and https only;
* the origins the operator configured (provider base URLs, upload URLs; the local fakes in tests)
  are trusted as they are;
* any other origin must be a public address. An IP literal is refused before connecting; for a
  host name the check runs on the connected socket's peer address (`GuardedConnector`), after DNS
  and before a byte of the request is written, so a name that resolves to a public address for a
  check and to 127.0.0.1 for the connection (DNS rebinding) gains nothing.

Credentials are the other half (`bot.providers.http`): caller headers never follow a redirect to
another origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import aiohttp
from yarl import URL

MAX_REDIRECTS = 3  # result CDNs redirect once or twice; more is a loop or a probe

Origin = tuple[str, str, int]

# Set while a hop to an untrusted origin is being opened; read by `GuardedConnector.connect`, which
# aiohttp awaits in the requesting task (so the variable is the request's own, not the session's).
_CHECK_PEER: ContextVar[bool] = ContextVar("retouch_check_peer", default=False)


class UnsafeDestination(Exception):
    """A URL or address the bot refuses to fetch. The message is safe to log (no query string)."""


def origin_of(url: str | URL) -> Origin | None:
    """(scheme, host, port) with the scheme's default port filled in; None when there is no host."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        host, port = parsed.host, parsed.port
    except (ValueError, TypeError):
        return None
    if not host or port is None:
        return None
    return (parsed.scheme.lower(), host.lower().rstrip("."), port)


def is_public_ip(text: str) -> bool:
    """Whether `text` is an IP address on the public internet.

    Refused: loopback, private (RFC 1918, ULA), link-local (169.254/16 holds the cloud metadata
    services), IPv6 site-local (fec0::/10: deprecated, which Python counts as global, but still
    routed inside some networks), carrier-grade NAT, multicast, unspecified and reserved ranges, and
    IPv4 addresses wrapped in IPv6 (mapped, NAT64 or 6to4) that are any of those.
    """
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_ip(str(ip.ipv4_mapped))
        if ip.sixtofour is not None:  # 2002::/16 carries an IPv4 address a 6to4 relay forwards to
            return is_public_ip(str(ip.sixtofour))
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            return is_public_ip(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_unspecified or ip.is_reserved)


def check_untrusted_url(url: URL) -> None:
    """Refuse a URL of an untrusted origin that can be refused before connecting."""
    if url.scheme.lower() not in ("http", "https"):
        raise UnsafeDestination(f"refusing a {url.scheme or 'schemeless'} URL")
    host = (url.host or "").rstrip(".")
    if not host:
        raise UnsafeDestination("refusing a URL without a host")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            raise UnsafeDestination(f"refusing {host}") from None
        return  # a name: checked on the socket
    if not is_public_ip(host):
        raise UnsafeDestination(f"refusing the non-public address {host}")


@contextmanager
def peer_checked(enabled: bool = True) -> Iterator[None]:
    """Within this block, a `GuardedConnector` lets the current task connect to public peers only."""
    token = _CHECK_PEER.set(enabled)
    try:
        yield
    finally:
        _CHECK_PEER.reset(token)


def can_check_peers(session: aiohttp.ClientSession) -> bool:
    """Whether `session` checks peer addresses (untrusted URLs are refused on any other session)."""
    return isinstance(session.connector, GuardedConnector)


class GuardedConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that, inside `peer_checked()`, hands out connections to public peers only.

    The check reads the connected socket's peer address, so it also covers pooled keep-alive
    connections and whatever DNS answered this time.
    """

    async def connect(self, req: aiohttp.ClientRequest, *args: Any, **kwargs: Any) -> Any:
        conn = await super().connect(req, *args, **kwargs)
        if _CHECK_PEER.get():
            transport = conn.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            address = peer[0] if isinstance(peer, tuple) and peer else ""
            if not is_public_ip(str(address)):
                conn.close()
                raise UnsafeDestination(f"refusing {req.url.host}: it resolved to a non-public address")
        return conn
