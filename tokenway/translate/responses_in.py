"""A Responses request in, a chat completions body out: pure functions over validated dicts.

Responses' input is a list of items (messages, the model's function calls, the caller's function
call outputs); chat's is a list of messages, where one assistant message carries the text and every
tool call of a turn and each result is a ``tool`` message. ``instructions`` is the system message;
a conversation continued with ``previous_response_id`` is the stored items, then the new ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Echoed on the response object as the client sent them (the rest have defaults there).
ECHOED = ("instructions", "max_output_tokens", "metadata", "previous_response_id", "temperature", "top_p", "user")


@dataclass(slots=True)
class ResponseDraft:
    """What one Responses call carries from its request to its answer (and into the store)."""

    id: str
    model: str
    request: dict[str, Any]  # the validated Responses body
    items: list[dict[str, Any]]  # the conversation so far: stored items, then this request's input
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def store(self) -> bool:
        return self.request.get("store") is not False


def input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message; none when left out)."""
    given = request.get("input") or []
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return [{"type": "message", **item} if "type" not in item else item for item in given]


def chat_body(request: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions body that asks what ``request`` asks, over the conversation ``items``."""
    messages: list[dict[str, Any]] = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": request["instructions"]})
    messages += chat_messages(items)
    body: dict[str, Any] = {"model": request["model"], "messages": messages}
    for name in ("temperature", "top_p", "user"):
        if request.get(name) is not None:
            body[name] = request[name]
    if request.get("max_output_tokens") is not None:
        body["max_tokens"] = request["max_output_tokens"]  # what every OpenAI-compatible server reads
    tools = request.get("tools")
    if tools:
        body["tools"] = [chat_tool(tool) for tool in tools]
        if request.get("parallel_tool_calls") is not None:
            body["parallel_tool_calls"] = request["parallel_tool_calls"]
    choice = request.get("tool_choice")
    if choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else {
            "type": "function", "function": {"name": choice["name"]}}
    response_format = _response_format(request.get("text"))
    if response_format is not None:
        body["response_format"] = response_format
    prompt = request.get("prompt")
    if prompt is not None:  # the gateway's prompt versions (tokenway/prompts) render it before the messages
        body["prompt"] = chat_prompt(prompt)
    effort = (request.get("reasoning") or {}).get("effort")
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.get("stream"):
        # Usage is asked for always: response.completed carries it (the chunk never reaches the client).
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def chat_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
    """Responses' ``prompt`` as chat's: the version a number, each variable its text."""
    out: dict[str, Any] = {"id": prompt["id"]}
    if prompt.get("version") is not None:
        out["version"] = int(prompt["version"])
    variables = prompt.get("variables") or {}
    out["variables"] = {name: value if isinstance(value, str) else value["text"] for name, value in variables.items()}
    return out


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """Responses' flat ``{type, name, parameters, strict}`` as chat's nested ``{type, function: {...}}``."""
    function = {name: tool[name] for name in ("name", "description", "parameters", "strict")
                if tool.get(name) is not None}
    return {"type": "function", "function": function}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages: an assistant's text and the function calls after it are one message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "refusal" not in last:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str) else _joined_text(output)})
        else:
            messages.append(_message(item))
    return messages


def _message(item: dict[str, Any]) -> dict[str, Any]:
    role, content = item["role"], item["content"]
    if isinstance(content, str):
        return {"role": role, "content": content}
    if role == "assistant":
        refusals = [part["refusal"] for part in content if part["type"] == "refusal"]
        if refusals and not any(part["type"] == "output_text" for part in content):
            return {"role": role, "content": None, "refusal": "".join(refusals)}
        return {"role": role, "content": _joined_text(content)}
    if role != "user" or all(part["type"] == "input_text" for part in content):
        return {"role": role, "content": _joined_text(content)}  # plain text is what every backend takes
    return {"role": role, "content": [_chat_part(part) for part in content]}


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "input_image":
        image = {"url": part["image_url"]}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part["text"]}


def _joined_text(parts: list[dict[str, Any]]) -> str:
    return "".join(part.get("text") or part.get("refusal") or "" for part in parts)


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    form = (text or {}).get("format")
    if form is None or form["type"] == "text":
        return None
    if form["type"] == "json_object":
        return {"type": "json_object"}
    spec = {name: form[name] for name in ("name", "description", "schema", "strict") if form.get(name) is not None}
    return {"type": "json_schema", "json_schema": spec}

