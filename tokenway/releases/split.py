"""Where a caller lands: a stable hash of who they are, laid over the versions' weights.

The hash is salted with the model's name, so a caller's place in one model's split says nothing
about another's; it depends on nothing but the identity and the weights, so every replica and
every restart puts the same caller on the same version. Changing a weight moves only the callers
in the slice that changed hands.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tokenway.releases.options import VersionConfig


def point(salt: str, identity: str) -> float:
    """A number in [0, 1), uniform over identities and the same for the same pair, everywhere."""
    digest = hashlib.blake2b(identity.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Split:
    """A model's versions as consecutive slices of [0, 1), in the order configured."""

    salt: str
    versions: tuple[VersionConfig, ...]
    bounds: tuple[float, ...]  # each version's slice ends here

    @classmethod
    def of(cls, model: str, versions: Sequence[VersionConfig]) -> Split:
        total = sum(v.weight for v in versions)
        bounds, running = [], 0.0
        for version in versions:
            running += version.weight / total
            bounds.append(running)
        bounds[-1] = 1.0  # no gap at the top from rounding
        return cls(model, tuple(versions), tuple(bounds))

    def pick(self, identity: str | None) -> VersionConfig:
        """The version for ``identity``; without one, a random version by weight (not sticky)."""
        at = point(self.salt, identity) if identity is not None else random.random()
        for version, bound in zip(self.versions, self.bounds, strict=True):
            if at < bound:
                return version
        return self.versions[-1]
