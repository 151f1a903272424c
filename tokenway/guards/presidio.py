"""Names, addresses and other entities through Microsoft Presidio (the ``tokenway[presidio]`` extra).

Imported only when a PII check lists ``presidio`` entities. Presidio's analyzer runs a spaCy
pipeline, which must be installed beforehand, as a package or a folder (Presidio would download a
missing one; the gateway refuses to start instead). Presidio's email and URL recognizers use
tldextract, which tries once to fetch the public suffix list and falls back to its bundled copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenway.guards.base import Span
from tokenway.guards.options import PiiCheck

INSTALL_HINT = (
    "The pii guard's 'presidio' entities need Microsoft Presidio and a spaCy model: "
    "pip install 'tokenway[presidio]' and then the spaCy model the check names (presidio_model, "
    "default en_core_web_sm, e.g. python -m spacy download en_core_web_sm), or remove 'presidio' from the check."
)


class PresidioUnavailable(RuntimeError):
    """Presidio or its spaCy model is not installed; the message says what to install."""


class PresidioFinder:
    """Finds Presidio entities (``PERSON``, ``LOCATION``...) scoring at least ``threshold``; a match
    of ``PERSON`` is masked as ``[PERSON]``. The analyzer is built once, at start."""

    def __init__(self, analyzer: Any, entities: list[str], threshold: float) -> None:
        self._analyzer = analyzer
        self._entities = entities
        self._threshold = threshold

    def find(self, text: str) -> list[Span]:
        results = self._analyzer.analyze(text=text, entities=self._entities, language="en")
        spans: list[Span] = []
        for result in sorted(results, key=lambda r: (r.start, -r.end)):
            if result.score < self._threshold or (spans and result.start < spans[-1].end):
                continue  # too unsure, or overlapping one already taken
            spans.append(Span(result.start, result.end, result.entity_type.lower(), f"[{result.entity_type}]"))
        return spans


def presidio_finder(check: PiiCheck) -> PresidioFinder:
    """A finder for ``check.presidio`` entities; raises ``PresidioUnavailable`` naming what to install."""
    try:
        import spacy.util
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError as exc:
        raise PresidioUnavailable(f"{INSTALL_HINT} ({exc})") from None
    model = check.presidio_model
    # Presidio downloads a model it does not find: the gateway never fetches anything at run time.
    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise PresidioUnavailable(f"{INSTALL_HINT} (the spaCy model {model!r} is not installed)")
    try:
        engine = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}],
        }).create_engine()
    except (OSError, ImportError) as exc:  # spaCy raises OSError for a model that is not installed
        raise PresidioUnavailable(f"{INSTALL_HINT} ({exc})") from None
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    return PresidioFinder(analyzer, list(check.presidio), check.presidio_threshold)
