"""The ``access`` section of the YAML config: rate limits, team budgets, fail-open/closed.

```yaml
access:
  on_store_down: closed        # Redis unreachable: "closed" answers 503, "open" serves unlimited
  anonymous: {rpm: 600}        # per client IP, for callers without a virtual key
  models:   {gpt-4o: {rpm: 1000, tpm: 2000000}}
  teams:    {research: {rpm: 300, budget: 50.00/month}}
```
Per-key limits and budgets live on the keys themselves (``tokenway keys create``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenway.stores.base import Budget


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimit(_Strict):
    rpm: Annotated[int, Field(ge=1)] | None = None  # requests per minute
    tpm: Annotated[int, Field(ge=1)] | None = None  # tokens per minute (prompt at admission, completion after)


class TeamConfig(RateLimit):
    budget: Budget | None = None


class AccessConfig(_Strict):
    on_store_down: Literal["open", "closed"] = "closed"
    anonymous: RateLimit = RateLimit()
    models: dict[str, RateLimit] = {}
    teams: dict[str, TeamConfig] = {}
    # A budgeted request without max_tokens gets this one, so the reservation is a true worst case.
    budget_max_tokens: Annotated[int, Field(ge=1)] = 4096
    keys_refresh_s: Annotated[float, Field(gt=0, le=5)] = 0.5  # how fast key changes reach every process
    ledger_flush_s: Annotated[float, Field(gt=0)] = 0.5
    redis_prefix: str = "tokenway:"
