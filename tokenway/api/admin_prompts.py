"""``/admin/prompts``: create prompt versions, list them, activate one, roll back (master key).

Every gateway process sees a change within ``prompts.refresh_s`` (tokenway/prompts/service.py);
the process that answered sees it at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from tokenway.api.guards import require_master_key
from tokenway.errors import NotFound
from tokenway.prompts.service import Prompts
from tokenway.prompts.templates import PROMPT_ID, PromptTemplate

PromptId = Annotated[str, Path(pattern=PROMPT_ID)]


class NewVersion(PromptTemplate):
    """A new version of the prompt ``id`` (version 1 makes the prompt)."""

    id: Annotated[str, Field(pattern=PROMPT_ID)]
    activate: bool = False  # make it the active version at once


class Activation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=1)]


def prompts_router(prompts: Prompts, master_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/admin/prompts", tags=["admin"], dependencies=[Depends(require_master_key(master_key))])

    @router.post("", summary="Create a prompt version (the next number of its prompt)")
    async def create(new: NewVersion) -> dict[str, Any]:
        template = PromptTemplate(system=new.system, user=new.user, note=new.note)
        version = await prompts.create(new.id, template, activate=new.activate)
        return version.public(active=new.activate)

    @router.get("", summary="Every prompt with its active version")
    async def list_prompts() -> dict[str, Any]:
        await prompts.refresh()
        return {"data": prompts.book.summary()}

    @router.get("/{prompt_id}", summary="A prompt's versions, the active one marked")
    async def versions(prompt_id: PromptId) -> dict[str, Any]:
        await prompts.refresh()
        listing = prompts.book.listing(prompt_id)
        if not listing:
            raise NotFound(f"No prompt {prompt_id!r}; list them with GET /admin/prompts.")
        return {"id": prompt_id, "data": listing}

    @router.post("/{prompt_id}/activate", summary="Make a version the active one")
    async def activate(prompt_id: PromptId, activation: Activation) -> dict[str, Any]:
        return (await prompts.activate(prompt_id, activation.version)).public(active=True)

    @router.post("/{prompt_id}/rollback", summary="Make the previously active version active again")
    async def rollback(prompt_id: PromptId) -> dict[str, Any]:
        return (await prompts.rollback(prompt_id)).public(active=True)

    return router
