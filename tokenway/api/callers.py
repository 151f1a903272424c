"""Who is calling an endpoint of the FastAPI side (jobs, files, batches, model listing): the same keys,
checked the same way, as the data plane's callers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from tokenway.api.calls import read_call
from tokenway.api.guards import presented_key
from tokenway.config import Limits
from tokenway.context import JobRef, RequestContext
from tokenway.errors import InvalidRequest, PermissionDenied
from tokenway.jobs.batch_lines import Validate
from tokenway.policies.access import AccessPolicy
from tokenway.stores.base import KeyRecord


class Callers:
    """Who is calling (the same keys as live traffic), and what they may submit as a job."""

    def __init__(self, access: AccessPolicy, limits: Limits, models: Callable[[], list[str]]) -> None:
        self._access = access
        self._limits = limits
        self._models = models

    def identify(self, request: Request, model: str | None = None) -> tuple[str, KeyRecord | None]:
        """The caller's owner name (key id, "master" or "anonymous") and key; 401/403 as live traffic gets."""
        headers = request.headers
        api_key = headers.get("api-key") or headers.get("x-api-key")  # Azure's header, Anthropic's
        ctx = RequestContext(request_id="", endpoint="jobs",
                             api_key=presented_key(headers.get("authorization"), api_key),
                             client_ip=request.client.host if request.client else None)
        key = self._access.authenticate(ctx, model)
        if key is not None:
            return key.id, key
        return ("master" if ctx.key_alias == "master" else "anonymous"), None

    def owner(self, request: Request) -> str:
        return self.identify(request)[0]

    def validator(self, owner: str) -> Validate:
        """How a batch line of ``owner`` is checked (the key as it is now: revoked keys run nothing)."""
        key = self._access.authenticate(RequestContext(request_id="", endpoint="jobs", job=JobRef("", owner)), None)

        def validate(kind: str, body: bytes) -> None:
            self.check_request(kind, body, key)

        return validate

    def check_request(self, kind: str, body: bytes, key: KeyRecord | None) -> dict[str, Any]:
        """A job's request body, checked as the live endpoint checks it, before it is queued."""
        call = read_call(kind, body, self._limits)
        if call.stream:
            raise InvalidRequest("Jobs cannot stream: leave out 'stream' and collect the result when it is done.",
                                 param="stream")
        model = call.body["model"]
        if model not in self._models():
            raise InvalidRequest(f"The model '{model}' does not exist on this gateway. Known: "
                                 f"{', '.join(self._models())}.", param="model", code="model_not_found")
        if key is not None and not key.allows(model):  # a batch line's model; a submit's was checked with the key
            raise PermissionDenied(f"The API key {key.id} may not use the model '{model}'. Allowed: "
                                   f"{', '.join(key.models)}.", param="model", code="model_not_allowed")
        return call.body
