"""Is a webhook endpoint's URL one tiergate may call? (At creation and before every attempt.)

Only ``http`` and ``https`` URLs with a host are accepted. Unless ``webhooks.allow_private``
is set, every address the host resolves to must be public: a loopback, private (RFC 1918,
unique-local), link-local (cloud metadata at 169.254.169.254 included), shared (CGNAT),
multicast, reserved or unspecified address is refused, so that a key's owner cannot make
the workers call into the network they run in. DNS can change between creation and
delivery, so the delivery resolves again, checks, and connects to the address it checked
(:class:`Target`), not to whatever a second lookup would answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """The URL is not one a webhook may be sent to; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where one attempt goes: the URL, its host, and the checked address to connect to."""

    url: str
    host: str
    address: IPAddress

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address (the Host header and TLS
        server name carry the host)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return parts._replace(netloc=netloc).geturl()


def parse(url: str) -> tuple[str, int]:
    """The host and port of an acceptable URL; raises :class:`UnsafeUrl` otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"only http and https URLs are allowed, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry a user name or password")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def private(address: IPAddress) -> bool:
    """Whether ``address`` is not a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return private(address.ipv4_mapped)
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve ({exc.strerror})") from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnsafeUrl(f"the host {host!r} does not resolve")
    return found


async def check(url: str, *, allow_private: bool) -> Target:
    """The target of ``url`` if it may be called; raises :class:`UnsafeUrl` otherwise."""
    host, port = parse(url)
    addresses = await resolve(host, port)
    if not allow_private:
        refused = [a for a in addresses if private(a)]
        if refused:
            raise UnsafeUrl(
                f"the host {host!r} resolves to a loopback, private or link-local address"
                f" ({refused[0]}); set webhooks: {{allow_private: true}} in the config to allow it"
            )
    return Target(url=url.strip(), host=host, address=addresses[0])
