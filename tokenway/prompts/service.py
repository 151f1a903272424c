"""Prompt versions for the gateway: the book kept in process, and the admin operations on it.

Requests never wait on the database: the policy reads the in-process ``PromptBook``. A poller
asks the store for events past the newest one it has applied (an index-only read when nothing
changed) every ``prompts.refresh_s``, so a version created, activated or rolled back by any
process or the CLI reaches every gateway process within that long; the process that made the
change applies it at once.
"""

from __future__ import annotations

from tokenway.errors import InvalidRequest, NotFound
from tokenway.observability.logging import JsonLog
from tokenway.prompts.book import PromptBook
from tokenway.prompts.store import PromptStore
from tokenway.prompts.templates import PromptTemplate, PromptVersion
from tokenway.stores.polling import Poller


class Prompts:
    def __init__(self, store: PromptStore, log: JsonLog, refresh_s: float = 0.5) -> None:
        self.store = store
        self.book = PromptBook()
        self._poller = Poller(self.refresh, refresh_s, log, "prompts",
                              "serving the prompt versions already loaded; changes are not seen until it recovers")

    async def start(self) -> None:
        await self.store.start()
        await self.refresh()
        self._poller.start()

    async def aclose(self) -> None:
        await self._poller.aclose()
        await self.store.aclose()

    async def refresh(self) -> None:
        self.book.apply(await self.store.events_since(self.book.seq))

    def resolve(self, prompt_id: str, version: int | None, param: str = "prompt") -> PromptVersion:
        """The version a request asked for (its prompt's active one when ``version`` is None), or a 400."""
        versions = self.book.versions.get(prompt_id)
        if versions is None:
            raise InvalidRequest(f"Unknown prompt {prompt_id!r}; GET /admin/prompts lists them.",
                                 param=f"{param}.id", code="unknown_prompt")
        found = self.book.active(prompt_id) if version is None else versions.get(version)
        if found is None and version is None:
            raise InvalidRequest(f"Prompt {prompt_id!r} has no active version; activate one, or name a version.",
                                 param=f"{param}.id", code="unknown_prompt")
        if found is None:
            raise InvalidRequest(f"Prompt {prompt_id!r} has no version {version} (its versions: "
                                 f"{', '.join(map(str, sorted(versions)))}).", param=f"{param}.version",
                                 code="unknown_prompt_version")
        return found

    # ---- admin operations (the admin API and the CLI) ----

    async def create(self, prompt_id: str, template: PromptTemplate, activate: bool = False) -> PromptVersion:
        version = await self.store.create(prompt_id, template)
        if activate:
            await self.store.append(prompt_id, version, "activate")
        await self.refresh()
        return self.book.versions[prompt_id][version]

    async def activate(self, prompt_id: str, version: int) -> PromptVersion:
        await self.refresh()
        if self.book.get(prompt_id, version) is None:
            raise self._missing(prompt_id, version)
        await self.store.append(prompt_id, version, "activate")
        await self.refresh()
        return self.book.versions[prompt_id][version]

    async def rollback(self, prompt_id: str) -> PromptVersion:
        """Make the version active before the current one active again."""
        await self.refresh()
        current = self.book.active(prompt_id)
        if current is None:
            raise self._missing(prompt_id, None)
        if self.book.previous(prompt_id) is None:
            raise InvalidRequest(f"Prompt {prompt_id!r} has had only one active version ({current.version}); there "
                                 "is nothing to roll back to. Activate another version instead.",
                                 param="id", code="nothing_to_roll_back")
        await self.store.append(prompt_id, current.version, "rollback")
        await self.refresh()
        active = self.book.active(prompt_id)
        assert active is not None
        return active

    def _missing(self, prompt_id: str, version: int | None) -> NotFound:
        if prompt_id not in self.book.versions:
            return NotFound(f"No prompt {prompt_id!r}; list them with GET /admin/prompts.")
        if version is None:
            return NotFound(f"Prompt {prompt_id!r} has no active version; activate one first.")
        return NotFound(f"Prompt {prompt_id!r} has no version {version}; see GET /admin/prompts/{prompt_id}.")
