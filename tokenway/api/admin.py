"""Keys and usage over HTTP: ``/admin/keys`` and ``/admin/usage`` (master key), ``GET /v1/usage`` (own key).

A key's secret is shown once, in the answer to its creation; afterwards only its id, hint
(last four characters) and settings. Deleting a key revokes it (the ledger keeps naming it).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from tokenway.access import Access
from tokenway.api.guards import presented_key, require_master_key
from tokenway.errors import AuthenticationFailed, InvalidRequest, NotFound
from tokenway.keys import key_record, new_key
from tokenway.policies.access import budget_lines
from tokenway.prompts.options import PromptPin
from tokenway.stores.base import NANOS_PER_DOLLAR, Budget, GroupBy, KeyRecord


class KeyFields(BaseModel):
    """What an admin may set on a key (all optional on update). Strict: ``false`` is no timestamp and
    ``"5"`` no rate (the fuzzer found them taken as 0.0 and 5), as the published schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    owner: str | None = None
    team: str | None = None
    labels: dict[str, str] | None = None
    models: list[str] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    max_parallel: Annotated[int, Field(ge=1)] | None = None
    max_streams: Annotated[int, Field(ge=1)] | None = None  # streams in flight at once
    budget: Budget | None = None
    structured_output: Literal["validate", "buffer"] | None = None  # "buffer": guaranteed valid JSON on streams too
    guards: list[str] | None = None  # guard profiles (config guards.profiles) applied on top of the model's
    prompt: PromptPin | None = None  # name or name@3: a prompt version this key's chat requests run with
    expires_at: float | None = None  # unix seconds
    expires_in_s: Annotated[float, Field(gt=0)] | None = None  # or: this long from now

    def check_guards(self, profiles: Collection[str]) -> None:
        """400 naming the first guard profile the config does not define."""
        for name in self.guards or []:
            if name not in profiles:
                known = ", ".join(sorted(profiles)) or "none are configured"
                raise InvalidRequest(f"Unknown guard profile {name!r} (the config's guards.profiles: {known}).",
                                     param="guards", code="unknown_guard_profile")

    def values(self) -> dict[str, Any]:
        out = self.model_dump(exclude_unset=True, exclude={"expires_in_s"})
        for name in ("labels", "models", "guards"):  # null clears a list or map (an empty allow-list: every model)
            if name in out and out[name] is None:
                out[name] = {} if name == "labels" else []
        if self.expires_in_s is not None:
            out["expires_at"] = time.time() + self.expires_in_s
        return out


def admin_router(access: Access, master_key: str | None, guard_profiles: Collection[str] = ()) -> APIRouter:
    admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])
    router = APIRouter()

    async def get_or_404(key_id: str) -> KeyRecord:
        record = await access.db.get_key(key_id)
        if record is None:
            raise NotFound(f"No key with id {key_id!r}; list them with GET /admin/keys.")
        return record

    @admin.post("/keys", summary="Create a virtual key (the secret is in this answer only)")
    async def create_key(fields: KeyFields) -> dict[str, Any]:
        fields.check_guards(guard_profiles)
        secret, key_id = new_key()
        record = key_record(secret, key_id, **fields.values())
        await access.db.put_key(record)
        await access.keys.refresh()
        return {"key": secret, **record.public()}

    @admin.get("/keys", summary="List keys (never their secrets)")
    async def list_keys() -> dict[str, Any]:
        return {"data": [r.public() for r in await access.db.list_keys()]}

    @admin.get("/keys/{key_id}", summary="Describe one key, with its budget use")
    async def get_key(key_id: str) -> dict[str, Any]:
        record = await get_or_404(key_id)
        return {**record.public(), "budgets": await _budget_state(access, record)}

    @admin.patch("/keys/{key_id}", summary="Change a key's settings")
    async def update_key(key_id: str, fields: KeyFields) -> dict[str, Any]:
        fields.check_guards(guard_profiles)
        record = await get_or_404(key_id)
        updated = KeyRecord.model_validate({**record.model_dump(), **fields.values()})
        await access.db.put_key(updated)
        await access.keys.refresh()
        return updated.public()

    @admin.delete("/keys/{key_id}", summary="Revoke a key (every process refuses it within a second)")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        record = await get_or_404(key_id)
        record.revoked = True
        await access.db.put_key(record)
        await access.keys.refresh()
        return record.public()

    @admin.get("/usage", summary="Usage and cost grouped by key, team, model or day")
    async def usage(
        group_by: GroupBy = "key", since: float | None = None, until: float | None = None,
        key_id: str | None = None, team: str | None = None,
    ) -> dict[str, Any]:
        await access.ledger.flush()  # so that this process's latest requests are counted
        start, end = _window(since, until)
        rows = await access.db.usage_summary(group_by, start, end, key_id=key_id, team=team)
        return {"group_by": group_by, "since": start, "until": end, "data": rows}

    @router.get("/v1/usage", tags=["openai"], summary="The calling key's own usage by day and model")
    async def own_usage(
        authorization: Annotated[str | None, Header()] = None, api_key: Annotated[str | None, Header()] = None,
        since: Annotated[float | None, Query()] = None, until: Annotated[float | None, Query()] = None,
    ) -> dict[str, Any]:
        presented = presented_key(authorization, api_key)
        record = access.keys.lookup(presented) if presented else None
        if record is None or record.revoked:
            raise AuthenticationFailed("GET /v1/usage needs a valid virtual key (Authorization: Bearer <key>).")
        await access.ledger.flush()
        start, end = _window(since, until)
        return {
            "key_id": record.id, "since": start, "until": end,
            "by_day": await access.db.usage_summary("day", start, end, key_id=record.id),
            "by_model": await access.db.usage_summary("model", start, end, key_id=record.id),
            "budgets": await _budget_state(access, record),
        }

    router.include_router(admin)
    return router


def _window(since: float | None, until: float | None) -> tuple[float, float]:
    end = until if until is not None else time.time() + 1
    return (since if since is not None else end - 30 * 86400), end


async def _budget_state(access: Access, record: KeyRecord) -> list[dict[str, Any]]:
    out = []
    for line in budget_lines(record, access.config):
        committed = await access.counters.committed(line)
        out.append({
            "scope": line.scope, "period": line.budget.period, "limit_usd": line.budget.amount,
            "committed_usd": committed / NANOS_PER_DOLLAR,  # spent plus reservations of requests in flight
            "remaining_usd": max(0, line.limit - committed) / NANOS_PER_DOLLAR,
        })
    return out
