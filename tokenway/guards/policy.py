"""The guards policy: the request's input guards before the call, its output guards on the answer.

A request's guards are its model's profiles (``models[].guards``) followed by its key's
(``KeyRecord.guards``; the access policy, which runs first, sets ``ctx.key``). They are resolved
once per (model, key profiles) into a ``_Plan`` and kept. Input masking rewrites the request's
message text before anything below sees it (the cache, the upstream); output masking rewrites the
answer (its JSON body, or the stream chunk by chunk). The cache sits below this policy, so it
stores what the upstream said and every caller's own guards apply to a cached answer too. Usage
and billing are what the upstream reported, masked or not.

Every action is counted in ``tokenway_guard_actions_total{guard,stage,action,model}``, once per
request and (guard, stage, action); ``flag`` and ``block`` also write a ``guard`` log line. Neither
ever holds the matched text: the guard, what kinds it found and how many.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest
from tokenway.guards.base import GuardBlocked, Stage, TextGuard, apply
from tokenway.guards.options import (
    Action,
    BlockedTermsCheck,
    GuardProfile,
    GuardsConfig,
    InjectionCheck,
    MaxOutputCheck,
    PiiCheck,
)
from tokenway.guards.pii import PiiFinder
from tokenway.guards.stream_guard import StreamGuard
from tokenway.guards.terms import TermsFinder
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call, Completion, Stream

if TYPE_CHECKING:
    from tokenway.config import GatewayConfig
    from tokenway.guards.injection import InjectionClassifier, InjectionRules

MAX_PLANS = 4096  # (model, key profiles) plans kept; past that the table starts over
_INJECTION_ROLES = ("user", "tool", "function")  # where injected instructions arrive; not the system prompt


@dataclass(frozen=True, slots=True)
class InjectionGuard:
    action: Action
    classifier: bool


@dataclass(slots=True)
class _Guards:
    """One profile's checks, built once (compiled patterns shared by every plan that uses them)."""

    input: list[TextGuard] = field(default_factory=list)
    injection: list[InjectionGuard] = field(default_factory=list)
    output: list[TextGuard] = field(default_factory=list)
    lengths: list[MaxOutputCheck] = field(default_factory=list)
    lookbehind: int = 0  # the longest blocked term, so a stream holds it back whole

    def extend(self, other: _Guards) -> None:
        self.input += other.input
        self.injection += other.injection
        self.output += other.output
        self.lengths += other.lengths
        self.lookbehind = max(self.lookbehind, other.lookbehind)


class Findings(dict[tuple[str, Stage, Action], Counter[str]]):
    """What the guards did in one request, by (guard, stage, action): the kinds found and how often."""

    def __call__(self, guard: str, stage: Stage, action: Action, kinds: Counter[str]) -> None:
        self.setdefault((guard, stage, action), Counter()).update(kinds)


def build_profile(profile: GuardProfile, presidio: Any = None) -> _Guards:
    """The runnable guards of one profile. ``presidio`` builds a Presidio finder for a PII check
    that asks for one (``tokenway.guards.presidio.presidio_finder``)."""
    guards = _Guards()
    for stage, checks in (("input", profile.input), ("output", profile.output)):
        texts = guards.input if stage == "input" else guards.output
        for check in checks:
            if isinstance(check, PiiCheck):
                texts.append(TextGuard("pii", check.action, PiiFinder(check.kinds)))
                if check.presidio:
                    texts.append(TextGuard("pii", check.action, presidio(check)))
            elif isinstance(check, BlockedTermsCheck):
                finder = TermsFinder(check.terms)
                texts.append(TextGuard("blocked_terms", check.action, finder))
                guards.lookbehind = max(guards.lookbehind, finder.longest + 1)
            elif isinstance(check, InjectionCheck):
                guards.injection.append(InjectionGuard(check.action, check.classifier))
            elif isinstance(check, MaxOutputCheck):
                guards.lengths.append(check)
    return guards


async def open_guards(config: GatewayConfig, metrics: Metrics, log: JsonLog) -> Guards | None:
    """The guards policy for ``config``, or None when no guard profile is configured (then the policy
    is not in the list at all). Loads Presidio and the injection classifier only if a profile asks."""
    settings = config.guards
    if not settings.profiles:
        return None
    checks = [check for p in settings.profiles.values() for check in (*p.input, *p.output)]
    presidio = None
    if any(isinstance(check, PiiCheck) and check.presidio for check in checks):
        from tokenway.guards.presidio import presidio_finder

        presidio = presidio_finder
    # Presidio loads a spaCy model: off the event loop, like the cache's embedder.
    profiles = await asyncio.to_thread(
        lambda: {name: build_profile(profile, presidio) for name, profile in settings.profiles.items()}
    )
    rules = classifier = None
    injection = [check for check in checks if isinstance(check, InjectionCheck)]
    if injection:
        from tokenway.guards.injection import InjectionClassifier, InjectionRules

        rules = InjectionRules()
        if any(check.classifier for check in injection):
            classifier = await InjectionClassifier.load()
    model_profiles = {model.name: model.guards for model in config.models}
    return Guards(settings, model_profiles, profiles, metrics, log, rules, classifier)


class Guards:
    """The policy. Build it with ``open_guards`` (which loads what the profiles need)."""

    def __init__(
        self, config: GuardsConfig, model_profiles: dict[str, list[str]], profiles: dict[str, _Guards],
        metrics: Metrics, log: JsonLog, rules: InjectionRules | None = None,
        classifier: InjectionClassifier | None = None,
    ) -> None:
        self._config = config
        self._model_profiles = model_profiles
        self._profiles = profiles
        self._metrics = metrics
        self._log = log
        self._rules = rules
        self._classifier = classifier
        self._plans: dict[tuple[str | None, tuple[str, ...]], _Guards | None] = {}

    def use_models(self, model_profiles: dict[str, list[str]]) -> None:
        """Each model's profiles, again when a reload changes the models (the profiles themselves, and what
        they loaded, stay until a restart)."""
        self._model_profiles = model_profiles
        self._plans = {}

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        model = call.body.get("model")
        if model not in self._model_profiles:
            model = None  # not a configured model: no profiles of its own, and no unbounded memo keys
        names = tuple(ctx.key.guards) if ctx.key is not None else ()
        plan = self._plans.get((model, names), _MISSING)
        if plan is _MISSING:
            plan = self._plan(model, names)
        if plan is None:
            return await next(ctx, call)
        label = model or "none"
        if call.kind == "responses" and (plan.output or plan.lengths):
            # A native Responses answer goes to the client as the backend wrote it: output checks, which
            # read chat answers, cannot see it, and a guard that cannot look must not let it through.
            raise InvalidRequest(
                f"The model {model!r} answers Responses natively, and this request's guards check output, which "
                "they can only do on answers the gateway translates; use a model whose deployments translate "
                "Responses (docs/responses.md).", param="model", code="guard_unsupported")
        if plan.input or plan.injection:
            findings = Findings()
            try:
                await self._check_input(call, plan, findings)
            finally:
                self._emit(ctx, label, findings)
        answer = await next(ctx, call)
        if not (plan.output or plan.lengths):
            return answer
        if isinstance(answer, Stream):
            return self._guard_stream(ctx, label, plan, answer)
        findings = Findings()
        try:
            return _guard_completion(answer, plan, findings)
        finally:
            self._emit(ctx, label, findings)

    async def aclose(self) -> None:
        if self._classifier is not None:
            await self._classifier.aclose()

    def _plan(self, model: str | None, key_profiles: tuple[str, ...]) -> _Guards | None:
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        names = list(dict.fromkeys([*(self._model_profiles.get(model, []) if model else []), *key_profiles]))
        plan: _Guards | None = None
        for name in names:
            profile = self._profiles.get(name)
            if profile is None:  # a key naming a profile a later config removed: that profile is gone
                self._log.event("guard_profile_missing", level="warning", profile=name,
                                note="a key names a guard profile the config does not define; it is skipped")
                continue
            plan = plan or _Guards()
            plan.extend(profile)
        self._plans[(model, key_profiles)] = plan
        return plan

    async def _check_input(self, call: Call, plan: _Guards, findings: Findings) -> None:
        suspects: list[tuple[str, str]] = []  # (param, text) the injection guards look at
        for param, text, role, put in request_texts(call):
            if plan.input:
                new = apply(text, plan.input, "input", findings, param)
                if new is not text:
                    put(new)
                    text = new
            if plan.injection and role in _INJECTION_ROLES:
                suspects.append((param, text))
        for guard in plan.injection:
            for param, text in suspects:
                verdict = self._rules.check(text) if self._rules is not None else None
                how = "rules"
                if (verdict is None or not verdict.injection) and guard.classifier and self._classifier is not None:
                    verdict, how = await self._classifier.check(text), "classifier"
                if verdict is None or not verdict.injection:
                    continue
                findings("injection", "input", guard.action, Counter({how: 1}))
                if guard.action == "block":
                    raise GuardBlocked("injection", "input", ["prompt injection"], param)

    def _guard_stream(self, ctx: RequestContext, label: str, plan: _Guards, inner: Stream) -> Stream:
        findings = Findings()
        lookbehind = max(self._config.stream_lookbehind, plan.lookbehind)
        guard = StreamGuard(plan.output, plan.lengths, lookbehind, findings)
        return Stream(lambda outer: _GuardedSource(inner, outer, guard, lambda: self._emit(ctx, label, findings)))

    def _emit(self, ctx: RequestContext, model: str, findings: Findings) -> None:
        for (guard, stage, action), kinds in findings.items():
            self._metrics.guard_acted(guard, stage, action, model)
            ctx.guard_actions.append(f"{guard}/{stage}/{action}")
            if action != "mask":
                self._log.event("guard", level="warning" if action == "flag" else "info",
                                request_id=ctx.request_id, guard=guard, stage=stage, action=action, model=model,
                                key=ctx.key_alias, kinds=dict(kinds))


_MISSING: Any = object()


def request_texts(call: Call) -> Iterator[tuple[str, str, str, Any]]:
    """Each text of a request: (param, text, role, put), where ``put(new)`` writes a new text in its
    place (copying the containers on its way, never the caller's objects)."""
    body = call.body
    if call.kind == "responses":
        yield from _responses_texts(body)
        return
    messages = body.get("messages")
    if isinstance(messages, list):
        yield from _item_texts(body, "messages", messages)
        return
    for name in ("prompt", "input"):  # a completions prompt; an embeddings input (token arrays are not text)
        value = body.get(name)
        if isinstance(value, str):
            yield name, value, "user", _putter(body, (name,))
        elif isinstance(value, list):
            for j, item in enumerate(value):
                if isinstance(item, str):
                    yield f"{name}[{j}]", item, "user", _putter(body, (name, j))


def _responses_texts(body: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    """A Responses request's texts: ``instructions`` (the system prompt), then ``input``'s messages and
    function call outputs (a tool's result, which injection guards read like a tool message)."""
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield "instructions", instructions, "system", _putter(body, ("instructions",))
    items = body.get("input")
    if isinstance(items, str):
        yield "input", items, "user", _putter(body, ("input",))
    elif isinstance(items, list):
        yield from _item_texts(body, "input", items)


def _item_texts(body: dict[str, Any], name: str, items: list[Any]) -> Iterator[tuple[str, str, str, Any]]:
    """The texts of chat messages (``name`` = messages) or Responses input items (``name`` = input)."""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        role = item.get("role") or ("tool" if item.get("type") == "function_call_output" else "")
        field = "output" if item.get("type") == "function_call_output" else "content"
        content = item.get(field)
        if isinstance(content, str):
            yield f"{name}[{i}].{field}", content, role, _putter(body, (name, i, field))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    put = _putter(body, (name, i, field, j, "text"))
                    yield f"{name}[{i}].{field}[{j}].text", part["text"], role, put


def _putter(body: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    """``put(new)``: ``new`` written at ``path`` in ``body``, each list and dict on the way copied first."""

    def put(new: str) -> None:
        holder: Any = body
        for step in path[:-1]:
            child = holder[step]
            holder[step] = child = list(child) if isinstance(child, list) else dict(child)
            holder = child
        holder[path[-1]] = new

    return put


def _guard_completion(answer: Completion, plan: _Guards, findings: Findings) -> Completion:
    """The answer with its choices' text and tool-call arguments guarded (the same object when
    nothing changed)."""
    try:
        doc = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return answer
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list):
        return answer
    changed = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        holder, key = (message, "content") if isinstance(message, dict) else (choice, "text")
        text = holder.get(key)
        if isinstance(text, str):
            new = _limited(apply(text, plan.output, "output", findings), plan.lengths, findings)
            if new is not text:
                holder[key], changed = new, True
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                new = apply(function["arguments"], plan.output, "output", findings)
                if new is not function["arguments"]:
                    function["arguments"], changed = new, True
    if not changed:
        return answer
    return Completion(body=orjson.dumps(doc), usage=answer.usage, headers=answer.headers)


def _limited(text: str, lengths: list[MaxOutputCheck], findings: Findings) -> str:
    for check in lengths:
        if len(text) <= check.limit:
            continue
        findings("max_output_chars", "output", check.action, Counter(chars=1))
        if check.action == "block":
            raise GuardBlocked("max_output_chars", "output", [f"more than {check.limit} characters"])
        if check.action == "mask":
            text = text[: check.limit]
    return text


class _GuardedSource:
    """A stream's source that passes each block through a ``StreamGuard``."""

    __slots__ = ("_done", "_guard", "_inner", "_outer")

    def __init__(self, inner: Stream, outer: Stream, guard: StreamGuard, done: Any) -> None:
        self._inner, self._outer, self._guard, self._done = inner, outer, guard, done

    @property
    def has_block(self) -> bool:
        return self._inner.ready()

    def __aiter__(self) -> _GuardedSource:
        return self

    async def __anext__(self) -> bytes:
        try:
            while True:
                try:
                    block = self._guard.feed(await self._inner.__anext__())
                except StopAsyncIteration:
                    block = self._guard.finish()  # ended without [DONE]: what is held still goes out
                    if not block:
                        raise
                if block:
                    return block
        finally:
            self._outer.usage = self._inner.usage

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._outer.usage = self._inner.usage
            self._done()
