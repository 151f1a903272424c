"""Precision, recall and per-call cost of the injection rules, the classifier, and both, on ``test.jsonl``.

    .venv/bin/python benchmarks/guards/injection/evaluate.py [--split test] [--rules-only] [--no-timing] \\
        [--json out.json]

Labels: 1 injection, 0 benign. "Rules or classifier" calls a text an injection when either does
(how the guard uses them together). Also: recall per kind of injection, false alarms per kind
of benign text, and the cost of one check of a 2 KB prompt with no injection in it (the rules
read the whole of it; the classifier encodes every window), median of repeated calls: a
request with a pasted report full of the rules' trigger words ("instructions", "system",
"following", "before"), the costly case, and for the rules also a plain one (a story request)
and a German one (not ASCII, so the Unicode normalisation runs).
``tests/test_guards_injection.py`` holds these numbers to floors set from RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenway.guards.injection import InjectionClassifier, InjectionRules

HERE = Path(__file__).parent

# About 2 KB of ordinary prompt: a request and a pasted document, no injection in it.
PROMPT_2KB = (
    "Please summarise the following report for the weekly operations meeting, keep it under 150 words and list "
    "any actions with their owners. Quarterly operations report. Warehouse throughput rose 6% over the previous "
    "quarter, mainly because the new sorting line in Building C ran at full capacity from the second week of "
    "April. Returns processing is still the bottleneck: the average return now takes 3.2 days to restock against "
    "a target of 2 days. The team proposes a second shift on Mondays and Tuesdays, when return volumes peak after "
    "weekend deliveries. Staffing: two forklift operators left in May; one replacement has started and the other "
    "position is open. Safety: no lost-time incidents this quarter; one near miss at loading dock 4 was "
    "investigated and the mirror there has been replaced. The system upgrade of the warehouse management software "
    "is scheduled for the first weekend of August; the vendor's instructions require a full stock count the week "
    "before, so the cycle counts planned for July will be merged into it. Energy use fell 4% after the lighting "
    "retrofit, in line with the estimate. Customer complaints about late deliveries dropped from 41 to 27, most "
    "of the remainder concern the regional carrier in the north-west, whose contract is up for renewal in "
    "September. Procurement has asked for quotes from two alternative carriers. Budget: operating costs are 2% "
    "under plan; the capital request for a second sorting line will go to the board in October with a payback "
    "estimate of 26 months. Open questions for the meeting: who owns the carrier review, whether the Monday "
    "shift needs approval from the works council, and when the stock count can start without delaying "
    "outbound orders during the summer promotion."
)


# About 2 KB with none of the rules' trigger words: what most prompts cost the rules.
PLAIN_2KB = (
    "Write a short story for children about a fox who wants to learn to swim. The fox lives at the edge of a "
    "forest beside a wide, slow river. Every morning she watches the otters slide into the water and come up with "
    "fish, laughing and splashing. She is embarrassed that she cannot swim, so she practises at night in a "
    "shallow pond where nobody can see her. One evening a heron notices her paddling in circles and offers to "
    "help. The heron explains that foxes are good swimmers if they keep their heads up and kick with all four "
    "legs at once. The fox tries it and moves a little further each night. Meanwhile the river rises after a week "
    "of rain, and a family of hedgehogs is trapped on a small island of reeds. The otters are away at the lake, "
    "and the heron cannot carry the hedgehogs. The fox remembers her lessons, takes a deep breath and swims out "
    "with the smallest hedgehog holding on to her tail. She makes the trip six times until the whole family is "
    "safe on the bank. The next morning the otters hear the news and invite the fox to swim with them. Keep the "
    "language simple, use short sentences, add a little humour, and end with a gentle lesson about practice and "
    "courage. The story should be about six hundred words long and suitable for reading aloud at bedtime to "
    "children between four and seven years old. Please give the story a title, and suggest two questions a "
    "parent could ask afterwards to talk about it. Avoid anything frightening; the rising river should feel "
    "exciting rather than scary. Use British spelling. Give the heron a funny habit, for example humming old "
    "songs while fishing, and let the smallest hedgehog say something cheerful at the very end of the story."
)


# About 2 KB of German (accents, so not ASCII): what the Unicode normalisation adds.
GERMAN_2KB = (
    "Bitte fasse den folgenden Bericht für die wöchentliche Besprechung zusammen, höchstens 150 Wörter, und "
    "liste die Aufgaben mit ihren Verantwortlichen auf. Quartalsbericht Betrieb: Der Durchsatz im Lager stieg "
    "gegenüber dem Vorquartal um sechs Prozent, vor allem weil die neue Sortieranlage in Gebäude C ab der "
    "zweiten Aprilwoche voll ausgelastet lief. Die Bearbeitung von Rücksendungen bleibt der Engpass: Eine "
    "Rücksendung braucht im Schnitt 3,2 Tage bis zur Wiedereinlagerung, das Ziel sind zwei Tage. Das Team schlägt "
    "eine zweite Schicht montags und dienstags vor, wenn nach den Wochenendlieferungen die meisten Rücksendungen "
    "eintreffen. Personal: Zwei Staplerfahrer sind im Mai gegangen; ein Ersatz hat angefangen, die andere Stelle "
    "ist offen. Sicherheit: Keine Unfälle mit Ausfallzeit in diesem Quartal; ein Beinaheunfall an Laderampe 4 "
    "wurde untersucht und der Spiegel dort ersetzt. Das Update der Lagerverwaltungssoftware ist für das erste "
    "Augustwochenende geplant; der Hersteller verlangt in der Woche davor eine vollständige Inventur, deshalb "
    "werden die für Juli geplanten Zählungen darin zusammengefasst. Der Energieverbrauch sank nach der Umrüstung "
    "der Beleuchtung um vier Prozent, wie erwartet. Beschwerden über verspätete Lieferungen gingen von 41 auf 27 "
    "zurück; die meisten übrigen betreffen den regionalen Spediteur im Nordwesten, dessen Vertrag im September "
    "ausläuft. Der Einkauf hat Angebote von zwei anderen Spediteuren angefordert. Budget: Die Betriebskosten "
    "liegen zwei Prozent unter Plan; der Investitionsantrag für eine zweite Sortieranlage geht im Oktober an den "
    "Vorstand. Offene Fragen: Wer übernimmt die Prüfung der Spediteure, und braucht die Montagsschicht die "
    "Zustimmung des Betriebsrats?"
)


@dataclass(frozen=True, slots=True)
class Scores:
    """Precision, recall and F1 of one detector on one split, and the counts behind them."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int


def load(split: str) -> list[dict[str, Any]]:
    """The rows of ``<split>.jsonl`` beside this script."""
    return [json.loads(line) for line in (HERE / f"{split}.jsonl").read_text("utf-8").splitlines()]


def scores(predicted: list[bool], rows: list[dict[str, Any]]) -> Scores:
    """Precision, recall and F1 of ``predicted`` against the rows' labels."""
    tp = sum(p and row["label"] == 1 for p, row in zip(predicted, rows, strict=True))
    fp = sum(p and row["label"] == 0 for p, row in zip(predicted, rows, strict=True))
    fn = sum(not p and row["label"] == 1 for p, row in zip(predicted, rows, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(round(precision, 3), round(recall, 3), round(f1, 3), tp, fp, fn)


def rules_verdicts(rows: list[dict[str, Any]], rules: InjectionRules | None = None) -> list[bool]:
    """The rules' verdict on every row."""
    rules = rules or InjectionRules()
    return [rules.check(row["text"]).injection for row in rows]


async def classifier_verdicts(rows: list[dict[str, Any]], classifier: InjectionClassifier) -> list[bool]:
    """The classifier's verdict on every row."""
    return [(await classifier.check(row["text"])).injection for row in rows]


def by_kind(predicted: list[bool], rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per kind of row: how many were called injections, of how many."""
    flagged, total = Counter[str](), Counter[str]()
    for p, row in zip(predicted, rows, strict=True):
        total[row["kind"]] += 1
        flagged[row["kind"]] += p
    return {kind: f"{flagged[kind]}/{total[kind]}" for kind in sorted(total)}


def rules_latency_us(rules: InjectionRules, prompt: str, repeat: int = 2000) -> float:
    """Median microseconds of one rules check of ``prompt`` (in batches of 100 calls)."""
    runs = []
    for _ in range(repeat // 100):
        start = time.perf_counter()
        for _ in range(100):
            rules.check(prompt)
        runs.append((time.perf_counter() - start) / 100 * 1e6)
    return round(statistics.median(runs), 1)


async def classifier_latency_ms(classifier: InjectionClassifier, repeat: int = 30) -> float:
    """Median milliseconds of one classifier check of the 2 KB prompt, awaited from the event loop."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        await classifier.check(PROMPT_2KB)
        runs.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(runs), 2)


async def evaluate(split: str, with_classifier: bool, timing: bool = True) -> dict[str, Any]:
    """Every number RESULTS.md reports, for ``split`` (the latencies only with ``timing``)."""
    rows = load(split)
    rules = InjectionRules()
    by_rules = rules_verdicts(rows, rules)
    report: dict[str, Any] = {
        "split": split, "rows": len(rows), "injections": sum(row["label"] for row in rows),
        "rules": asdict(scores(by_rules, rows)), "rules_by_kind": by_kind(by_rules, rows),
        "prompt_bytes": len(PROMPT_2KB.encode()),
    }
    if timing:
        report["rules_latency_us_2kb"] = rules_latency_us(rules, PROMPT_2KB)
        report["rules_latency_us_2kb_plain"] = rules_latency_us(rules, PLAIN_2KB)
        report["rules_latency_us_2kb_german"] = rules_latency_us(rules, GERMAN_2KB)
    if with_classifier:
        classifier = await InjectionClassifier.load()
        try:
            by_model = await classifier_verdicts(rows, classifier)
            either = [a or b for a, b in zip(by_rules, by_model, strict=True)]
            report |= {
                "threshold": classifier.threshold,
                "classifier": asdict(scores(by_model, rows)), "classifier_by_kind": by_kind(by_model, rows),
                "either": asdict(scores(either, rows)), "either_by_kind": by_kind(either, rows),
            }
            if timing:
                report["classifier_latency_ms_2kb"] = await classifier_latency_ms(classifier)
        finally:
            await classifier.aclose()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--rules-only", action="store_true", help="skip the classifier (no model load)")
    parser.add_argument("--no-timing", action="store_true", help="skip the latency measurements")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    report = asyncio.run(evaluate(args.split, not args.rules_only, not args.no_timing))
    print(f"{args.split}: {report['rows']} texts, {report['injections']} injections")
    print(f"{'detector':<22}{'precision':>10}{'recall':>8}{'F1':>7}{'TP':>5}{'FP':>5}{'FN':>5}")
    for name in ("rules", "classifier", "either"):
        if name in report:
            s = report[name]
            print(f"{name:<22}{s['precision']:>10.3f}{s['recall']:>8.3f}{s['f1']:>7.3f}"
                  f"{s['true_positives']:>5}{s['false_positives']:>5}{s['false_negatives']:>5}")
    if "rules_latency_us_2kb" in report:
        print(f"rules: {report['rules_latency_us_2kb']} µs per {report['prompt_bytes']}-byte prompt, "
              f"{report['rules_latency_us_2kb_plain']} µs per {len(PLAIN_2KB.encode())}-byte plain prompt, "
              f"{report['rules_latency_us_2kb_german']} µs per {len(GERMAN_2KB.encode())}-byte German prompt")
    if "classifier_latency_ms_2kb" in report:
        print(f"classifier: {report['classifier_latency_ms_2kb']} ms per {report['prompt_bytes']}-byte prompt "
              f"(threshold {report['threshold']})")
    for name in ("rules_by_kind", "classifier_by_kind", "either_by_kind"):
        if name in report:
            print(f"{name}: {json.dumps(report[name])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
