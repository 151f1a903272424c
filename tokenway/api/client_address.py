"""The client's address behind a reverse proxy, believed only from proxies the operator trusts.

nginx (or a cloud load balancer) connects to the gateway itself, so the socket's peer is the proxy:
per-IP limits and logs would see one client. The proxy passes the real address in
``X-Forwarded-For`` (each hop appends the address it got the connection from) or ``X-Real-IP``.
Anyone can send those headers, so they are read only when the connection comes from an address in
``TOKENWAY_TRUSTED_PROXIES``; the list is then walked from the right, past every trusted hop, and
the first address not trusted is the client (nginx's ``real_ip_recursive on``). A client that
writes its own ``X-Forwarded-For`` only adds entries to the left of the ones the proxies appended,
which the walk never reaches.

With no trusted proxies (the default) nothing here runs: the peer address is the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address


class TrustedProxies:
    """The networks whose forwarded-for headers are believed."""

    def __init__(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        self._networks = tuple(networks)

    @classmethod
    def of(cls, networks: Sequence[IPv4Network | IPv6Network]) -> TrustedProxies | None:
        """None when there are none, so the request path skips the header walk entirely."""
        return cls(networks) if networks else None

    def trusts(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False  # e.g. a Unix socket peer or garbage in a header
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener ("::") sees IPv4 peers as ::ffff:a.b.c.d
        return any(ip in network for network in self._networks)

    def client(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address for a connection from ``peer`` with these request headers."""
        if not self.trusts(peer):
            return peer
        forwarded: list[str] = []
        real_ip: str | None = None
        for name, value in headers:
            if name == b"x-forwarded-for":  # several header lines are one list, in order
                forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
            elif name == b"x-real-ip":
                real_ip = value.decode("latin-1").strip()
        for hop in reversed(forwarded):
            if not _is_address(hop):
                break  # not written by a proxy of ours: stop believing the list here
            if not self.trusts(hop):
                return hop
            peer = hop
        if not forwarded and real_ip is not None and _is_address(real_ip):
            return real_ip
        return peer


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
