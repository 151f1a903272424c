"""Workers from DNS: the A and AAAA records of one name (a Kubernetes headless Service), every N seconds.

dnspython's asyncio resolver asks the server directly rather than through ``getaddrinfo``: no thread
per lookup, no libc or nscd cache between us and the records, and a nameserver of our choosing
(``nameserver: 127.0.0.1:8600`` for Consul's DNS). A name that does not exist (NXDOMAIN, as a
headless Service with no ready pod may answer) means no workers; a lookup that fails (timeout,
SERVFAIL) keeps the workers known, so a DNS hiccup never empties a model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.exception
import dns.resolver

from tokenway.observability.logging import JsonLog
from tokenway.routing.discovery import Address
from tokenway.routing.options import DiscoveryConfig


class DnsSource:
    def __init__(self, discovery: DiscoveryConfig, log: JsonLog) -> None:
        assert discovery.dns is not None and isinstance(discovery.port, int), "checked by DiscoveryConfig"
        self._name = discovery.dns
        self._port = discovery.port
        self._interval = discovery.interval_s
        self._log = log
        nameserver = discovery.nameserver_address()
        if nameserver is None:
            self._resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf, search domains included
            self._search: bool | None = True  # "vllm" finds vllm.<namespace>.svc.cluster.local in a pod
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
            self._search = None
        self._resolver.lifetime = min(5.0, max(1.0, self._interval))
        self._failing: str | None = None

    async def watch(self) -> AsyncIterator[frozenset[Address]]:
        while True:
            found = await self.resolve()
            if found is not None:
                yield found
            await asyncio.sleep(self._interval)

    async def resolve(self) -> frozenset[Address] | None:
        """The workers the records name now, or None when the lookup failed."""
        answers = await asyncio.gather(self._query("A"), self._query("AAAA"))
        if any(hosts is None for hosts in answers):
            return None
        if self._failing is not None:
            self._failing = None
            self._log.event("discovery_dns_recovered", name=self._name)
        return frozenset(Address(host, self._port) for hosts in answers for host in hosts or ())

    async def _query(self, rdtype: str) -> list[str] | None:
        try:
            answer = await self._resolver.resolve(self._name, rdtype, search=self._search, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            why = f"{rdtype} lookup failed: {exc}"
            if why != self._failing:  # once per kind of failure, not every interval
                self._log.event("discovery_dns_failed", level="warning", name=self._name, error=why)
            self._failing = why
            return None
        return [record.address for record in answer.rrset or ()]
