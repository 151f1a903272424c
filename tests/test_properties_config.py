"""Property tests of the config loader (tokenway/config.py ``parse_config``): any text either loads or
raises ``ConfigError`` whose every line starts ``file:line:`` with a line of the file, never another
exception; and valid configs, generated from the config's own JSON schemas, load and round-trip
(dumped and loaded again: the same config and the same digest).

Hypothesis runs derandomized; a failure prints the smallest YAML text that breaks the property.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.property_support import PROPERTY
from tokenway.config import (
    ConfigError,
    GatewayConfig,
    Limits,
    Logging,
    Price,
    Streaming,
    Timeouts,
    parse_config,
)
from tokenway.providers.registry import provider_class

SOURCE = "gateway.yaml"
WHERE = re.compile(rf"^{re.escape(SOURCE)}:(\d+): \S")


def check_loads_or_says_where(text: str) -> GatewayConfig | None:
    """The property itself: a config, or a ``ConfigError`` naming a line of ``text`` on each line."""
    try:
        return parse_config(text, SOURCE)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        assert lines, "a ConfigError says what is wrong"
        last_line = text.count("\n") + 1
        for line in lines:
            match = WHERE.match(line)
            assert match, f"not 'file:line: ...': {line!r}"
            assert 1 <= int(match.group(1)) <= last_line, f"line {match.group(1)} of a {last_line}-line file"
        return None


@cache
def section(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Values for one config section, from the section's JSON schema (so new fields are covered too)."""
    return from_schema(model.model_json_schema())


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values of the JSON schemas pydantic writes for the flat config sections: objects of numbers
    with bounds, booleans, enums, strings, nulls, lists and string maps. Each field is present or not."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema or "const" in schema:
        return st.sampled_from(schema.get("enum") or [schema["const"]])
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        fields = {name: from_schema(sub) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries({}, optional=fields)
    if kind == "object":
        return st.dictionaries(NAMES, from_schema(schema.get("additionalProperties") or {"type": "string"}),
                               max_size=2)
    if kind == "array":
        return st.lists(from_schema(schema.get("items") or {"type": "string"}), max_size=2)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if kind == "integer":
            low = None if low is None else int(low) + ("exclusiveMinimum" in schema)
            return st.integers(low, None if high is None else int(high) - ("exclusiveMaximum" in schema))
        return st.floats(low, high, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(CHARACTERS, min_size=schema.get("minLength", 0), max_size=12)
    raise AssertionError(f"a schema this test does not generate yet: {schema}")


FINITE = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
NAMES = st.text(CHARACTERS, min_size=1, max_size=12)


@st.composite
def deployments(draw: st.DrawFn) -> dict[str, Any]:
    provider = draw(st.sampled_from(["openai", "ollama"]))
    options = draw(section(provider_class(provider).Options))
    deployment: dict[str, Any] = {"provider": provider, **options}
    if draw(st.booleans()):
        deployment["api_base"] = draw(st.sampled_from(["http://127.0.0.1:9/v1", "http://[::1]:8080", "https://x.example"]))
    if draw(st.booleans()):
        deployment["timeouts"] = draw(section(Timeouts))
    if draw(st.booleans()):
        deployment["price"] = draw(section(Price))
    if draw(st.booleans()):
        deployment["weight"] = draw(FINITE)
    if draw(st.booleans()):
        deployment["headers"] = draw(st.dictionaries(st.sampled_from(["x-a", "x-b"]), NAMES, max_size=2))
    return deployment


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    models = [{"name": name, "deployments": draw(st.lists(deployments(), min_size=1, max_size=2))} for name in names]
    native = set()
    for model in models:  # a model relays Responses natively with every deployment, or with none
        relays = all(d["provider"] == "openai" for d in model["deployments"]) and draw(st.booleans())
        for deployment in model["deployments"]:
            deployment.pop("responses", None)
            if relays:
                deployment["responses"] = "native"
                native.add(model["name"])
    for model in models[1:]:  # a fallback is another configured model (a native one's, native too)
        if draw(st.booleans()) and (model["name"] not in native or names[0] in native):
            model["fallbacks"] = [names[0]]
    config: dict[str, Any] = {"models": models}
    for key, model_type in (("limits", Limits), ("streaming", Streaming), ("logging", Logging)):
        if draw(st.booleans()):
            config[key] = draw(section(model_type))
    return config


@PROPERTY
@given(configs())
def test_valid_configs_load_and_round_trip(config: dict[str, Any]) -> None:
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    loaded = check_loads_or_says_where(text)
    assert loaded is not None, "a config built from the schemas is valid"
    again = parse_config(yaml.safe_dump(loaded.model_dump(mode="json"), allow_unicode=True), SOURCE)
    assert again == loaded
    assert again.digest() == loaded.digest()


@PROPERTY
@given(configs(), st.data())
def test_a_changed_provider_option_changes_the_digest(config: dict[str, Any], data: st.DataObject) -> None:
    for model in config["models"]:  # an Ollama deployment translates Responses: so does every model here
        for deployment in model["deployments"]:
            deployment.pop("responses", None)
    config["models"][0]["deployments"][0] = {"provider": "ollama", "keep_alive": data.draw(NAMES)}
    loaded = parse_config(yaml.safe_dump(config), SOURCE)
    config["models"][0]["deployments"][0]["keep_alive"] += "0"
    assert parse_config(yaml.safe_dump(config), SOURCE).digest() != loaded.digest()


# Text an editor might leave in a config: YAML's own punctuation, tags, anchors, tabs, odd characters.
YAML_BITS = st.sampled_from([
    ":", ": ", "- ", "-", "[", "]", "{", "}", ",", "?", "!", "&a ", "*a", "|", ">", "#", "'", '"', "%", "@", "`",
    "\t", "\n", "\r\n", "  ", "~", "null", "true", "yes", "0x1F", "1e999", ".nan", "-.inf", "\x00", "\ufeff",
    "\x85", "\u2028", "é", "models", "deployments", "provider", "name", "openai", "ollama", "local",
    "!!int ", "!!float ", "!!bool ", "!!str ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!pairs ",
    "!!null ", "!!map ", "!!seq ", "!!python/object:os.system ", "!custom ", "<<: ", "---\n", "...\n",
])
YAML_TEXT = st.lists(st.one_of(YAML_BITS, st.text(max_size=4)), max_size=30).map("".join)
TAGGED = st.builds(
    lambda tag, value, key: f"{key}: !!{tag} {value}\n",
    st.sampled_from(["int", "float", "bool", "timestamp", "binary", "null", "set", "omap", "pairs", "str"]),
    st.sampled_from(["abc", "2020-99-99", "x", "1_0", "0o9", "***", "[1]", "{a: 1}", "", "1e999", "'q'"]),
    st.sampled_from(["models", "limits", "a"]),
)


@PROPERTY
@given(st.one_of(YAML_TEXT, TAGGED, st.text(max_size=60)))
def test_any_text_loads_or_says_which_line(text: str) -> None:
    check_loads_or_says_where(text)


@st.composite
def edited_configs(draw: st.DrawFn) -> str:
    """A valid config's text with a few edits: spans cut out, punctuation and values put in."""
    text = yaml.safe_dump(draw(configs()), sort_keys=False)
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 8)))
        text = text[:start] + draw(st.one_of(st.just(""), YAML_BITS, st.text(max_size=3))) + text[end:]
    return text


@PROPERTY
@given(edited_configs())
def test_an_edited_config_loads_or_says_which_line(text: str) -> None:
    check_loads_or_says_where(text)


def test_deep_nesting_and_bad_tags_are_config_errors() -> None:
    # Found by the properties above: PyYAML's constructor raised ValueError (!!int abc, !!float abc,
    # !!timestamp 2020-99-99), AttributeError (!!timestamp x), KeyError (!!bool models) and RecursionError
    # (deep nesting) through parse_config, and a refused character gave a message without a line.
    cases = [("a: 1\nmodels: !!int abc\n", 2), ("x: !!float abc", 1), ("\n\nx: !!timestamp 2020-99-99", 3),
             ("x: !!timestamp x", 1), ("x: !!bool models", 1), ("[" * 5000 + "]" * 5000, 1), ("a: 1\n\x00", 2)]
    for text, line in cases:
        try:
            parse_config(text, SOURCE)
        except ConfigError as exc:
            assert str(exc).startswith(f"{SOURCE}:{line}: not valid YAML"), str(exc)
        else:
            raise AssertionError(f"{text[:30]!r} loaded")
