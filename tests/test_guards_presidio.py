"""Presidio as the pii guard's optional engine: the error without the extra, and, where Presidio is
installed, its entities masked through the gateway (on a blank spaCy pipeline: the pattern-based
recognizers need no trained model, and none can be downloaded here)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import sys
from pathlib import Path

import pytest

from tests.inprocess import gateway, reply
from tokenway.config import parse_config
from tokenway.guards.policy import open_guards
from tokenway.guards.presidio import PresidioUnavailable
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics

MODELS = """
models:
  - name: m
    guards: [pii]
    deployments: [{provider: fake, name: a}]
"""


def profile(check: str) -> str:
    return f"{MODELS}guards:\n  profiles:\n    pii:\n      input: [{check}]\n      output: [{check}]\n"


def test_without_the_extra_the_gateway_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # as if it were not installed
    config = parse_config(profile("{check: pii, presidio: [PERSON, LOCATION]}"))
    with pytest.raises(PresidioUnavailable) as caught:
        asyncio.run(open_guards(config, Metrics(), JsonLog(io.BytesIO())))
    assert "pip install 'tokenway[presidio]'" in str(caught.value) and "en_core_web_sm" in str(caught.value)


needs_presidio = pytest.mark.skipif(importlib.util.find_spec("presidio_analyzer") is None,
                                    reason="the presidio extra is not installed")


@needs_presidio
def test_a_spacy_model_that_is_not_installed_is_named() -> None:
    config = parse_config(profile("{check: pii, presidio: [PERSON], presidio_model: no_such_model_xx}"))
    with pytest.raises(PresidioUnavailable) as caught:
        asyncio.run(open_guards(config, Metrics(), JsonLog(io.BytesIO())))
    assert "no_such_model_xx" in str(caught.value) and "presidio_model" in str(caught.value)


@needs_presidio
async def test_presidio_entities_are_masked_beside_the_regex_kinds(tmp_path: Path) -> None:
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    check = f"{{check: pii, action: mask, kinds: [email], presidio: [CREDIT_CARD], presidio_model: '{tmp_path}/blank'}}"
    async with gateway(profile(check)) as gw:
        gw.fake("a").script(reply("Charge 4111 1111 1111 1111 ", "for ann@example.com."))
        answer = await gw.chat(messages=[{"role": "user", "content": "card 5500 0000 0000 0004, mail bo@example.org"}])
        sent = gw.fake("a").calls[0]["messages"][0]["content"]
    assert sent == "card [CREDIT_CARD], mail [EMAIL]"
    assert answer.json()["choices"][0]["message"]["content"] == "Charge [CREDIT_CARD] for [EMAIL]."
