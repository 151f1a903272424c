"""Every prompt's versions and activation history, folded from the store's events.

The store keeps an append-only list of events (a version created, a version activated, a
rollback), each with a number from one sequence. A ``PromptBook`` applies them in order; a
process that has applied up to number N asks only for the events after N. The active version of
a prompt is the top of its activation stack: ``activate`` pushes, ``rollback`` pops (never the
last one, so a prompt once activated always has an active version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

from tokenway.prompts.templates import PromptVersion

Action = Literal["create", "activate", "rollback"]


@dataclass(frozen=True, slots=True)
class PromptEvent:
    seq: int
    prompt_id: str
    version: int  # the version created or activated; for a rollback, the version rolled back from
    action: Action
    data: str | None  # a created version's template (JSON: system, user, note)
    ts: float


@dataclass(slots=True)
class PromptBook:
    seq: int = 0  # the newest event applied
    versions: dict[str, dict[int, PromptVersion]] = field(default_factory=dict)
    stacks: dict[str, list[int]] = field(default_factory=dict)  # activations, oldest first

    def apply(self, events: list[PromptEvent]) -> None:
        for event in events:
            if event.seq <= self.seq:
                continue
            self.seq = event.seq
            if event.action == "create":
                template = orjson.loads(event.data or "{}")
                self.versions.setdefault(event.prompt_id, {})[event.version] = PromptVersion.of(
                    event.prompt_id, event.version, template.get("system"), template.get("user"),
                    template.get("note"), event.ts)
            elif event.action == "activate":
                self.stacks.setdefault(event.prompt_id, []).append(event.version)
            else:
                stack = self.stacks.get(event.prompt_id, [])
                if len(stack) > 1:  # two rollbacks racing past the first version: the first one stays
                    stack.pop()

    def active(self, prompt_id: str) -> PromptVersion | None:
        stack = self.stacks.get(prompt_id)
        return self.versions[prompt_id][stack[-1]] if stack else None

    def get(self, prompt_id: str, version: int) -> PromptVersion | None:
        return self.versions.get(prompt_id, {}).get(version)

    def previous(self, prompt_id: str) -> int | None:
        """The version a rollback would make active, or None when there is nothing to go back to."""
        stack = self.stacks.get(prompt_id, [])
        return stack[-2] if len(stack) > 1 else None

    def summary(self) -> list[dict[str, object]]:
        """One row per prompt: its active version and how many it has."""
        out: list[dict[str, object]] = []
        for prompt_id in sorted(self.versions):
            active = self.active(prompt_id)
            out.append({"id": prompt_id, "active_version": active.version if active else None,
                        "versions": len(self.versions[prompt_id]),
                        "latest_version": max(self.versions[prompt_id])})
        return out

    def listing(self, prompt_id: str) -> list[dict[str, object]]:
        active = self.active(prompt_id)
        return [v.public(active is not None and v.version == active.version)
                for _, v in sorted(self.versions.get(prompt_id, {}).items())]
