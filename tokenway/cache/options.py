"""The ``cache:`` sections of the YAML config: gateway-wide defaults and per-model overrides.

```yaml
cache:                     # gateway-wide; every field optional
  ttl_s: 3600
  max_bytes: 67108864      # in-memory store bound (the embedded default)
  backend: auto            # auto: Redis when TOKENWAY_REDIS_URL is set, else memory
  semantic: {threshold: 0.9, verify: true}
models:
  - name: m
    cache: {ttl_s: 60, semantic: true}   # semantic is opt-in per model
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Seconds = Annotated[float, Field(gt=0)]
Similarity = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SemanticCacheConfig(_Strict):
    # Cosine similarity a neighbour needs before it is even verified; picked from
    # benchmarks/semantic_cache (false hits <= 1% on hard near-misses, with verification).
    threshold: Similarity = 0.86
    verify: bool = True  # numbers, names, negations, antonyms and word order must agree
    max_entries: Annotated[int, Field(ge=1)] = 20_000  # per process, across all scopes
    max_chars: Annotated[int, Field(ge=1)] = 2_000  # longer questions are exact-only


class CacheConfig(_Strict):
    enabled: bool = True
    backend: Literal["auto", "memory", "redis"] = "auto"
    ttl_s: Seconds = 3600.0
    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[int, Field(ge=256)] = 1024 * 1024
    deterministic_only: bool = True  # cache only temperature 0 or seeded calls
    coalesce: bool = True  # identical calls in flight share one backend call
    semantic: SemanticCacheConfig = SemanticCacheConfig()


class ModelCacheConfig(_Strict):
    """Per-model overrides; a field left out takes the gateway-wide value."""

    enabled: bool | None = None
    ttl_s: Seconds | None = None
    deterministic_only: bool | None = None
    semantic: bool = False
    threshold: Similarity | None = None
