"""Workloads: what each simulated user sends.

A workload is a deterministic function `index -> Session` (same seed, same requests), so two runs
being compared sent the same traffic. A Session is one conversation: one turn for ordinary
benchmarks, several for multi-turn, where each turn carries the real replies of the turns before.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tokenway.bench.tokens import count_tokens

# Common English words that are one token each (with their leading space) in GPT-style BPE
# vocabularies, so a synthetic prompt of n words is close to n tokens on most tokenizers.
_WORDS = (
    "the of and to in is was for on that with as by at from his her they have had are were be "
    "this which or an not but all can one has been their there more when would who will what so "
    "about out up into than them some could other time these two may then do first any my now "
    "such like our over man me even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state "
    "good very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since against go "
    "came right used take three house use during without again place around however home small "
    "found thought went say part once general high upon school every does got united left number "
    "course war until always away something fact though water less public put think almost hand "
    "enough far took head yet government system better set told nothing night end why called "
    "find look asked later point knew city next program business give group toward young days "
    "let room president side social present given several order national possible rather second "
    "face per among form important often things looked early white case become large big need "
    "four within felt children along saw best church ever least power development light seemed"
).split()

SAMPLE_DATASET = "sample_sharegpt.json"


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: normal(mean, std) clipped to [lo, hi]; std 0 = fixed."""

    mean: int
    std: float = 0.0
    lo: int = 1
    hi: int = 1 << 20

    def sample(self, rng: random.Random) -> int:
        value = self.mean if self.std <= 0 else round(rng.gauss(self.mean, self.std))
        return max(self.lo, min(self.hi, value))

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        """Parse `MEAN[,STD[,MIN[,MAX]]]`, e.g. `512` or `512,128,64,1024`."""
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not 1 <= len(parts) <= 4:
            raise ValueError(f"length spec {spec!r}: expected MEAN[,STD[,MIN[,MAX]]]")
        mean = int(parts[0])
        std = float(parts[1]) if len(parts) > 1 else 0.0
        lo = int(parts[2]) if len(parts) > 2 else 1
        hi = int(parts[3]) if len(parts) > 3 else 1 << 20
        if mean < 1 or lo < 1 or hi < lo:
            raise ValueError(f"length spec {spec!r}: need MEAN >= 1 and 1 <= MIN <= MAX")
        return cls(mean, std, lo, hi)


@dataclass(frozen=True)
class Turn:
    """One user message and the number of tokens asked for in reply."""

    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class Session:
    """One conversation. `system` holds a shared prefix (identical within `group`)."""

    turns: tuple[Turn, ...]
    system: str | None = None
    group: int | None = None


Workload = Callable[[int], Session]


def words(n: int, rng: random.Random) -> str:
    """n random common words: about n tokens of text that no cache has seen before."""
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def synthetic(
    input_len: LengthDist,
    output_len: LengthDist,
    *,
    seed: int = 0,
    turns: int = 1,
    prefix_groups: int = 0,
    prefix_len: int = 0,
) -> Workload:
    """Random prompts with the given length distributions. With `prefix_groups` > 0 every
    session starts with one of that many shared system prefixes of `prefix_len` tokens."""

    def make(index: int) -> Session:
        rng = random.Random(seed * 1_000_003 + index)
        group = system = None
        if prefix_groups > 0:
            group = rng.randrange(prefix_groups)
            system = words(prefix_len, random.Random(f"prefix-{seed}-{group}"))
        made = tuple(Turn(words(input_len.sample(rng), rng), output_len.sample(rng)) for _ in range(max(1, turns)))
        return Session(made, system, group)

    return make


def _sharegpt_sessions(records: list[dict[str, Any]], *, multi_turn: bool, fixed_output: int | None) -> list[Session]:
    sessions: list[Session] = []
    for rec in records:
        convo = rec.get("conversations") or rec.get("conversation") or []
        pairs: list[Turn] = []
        for ask, reply in zip(convo[::2], convo[1::2], strict=False):
            if ask.get("from") not in ("human", "user") or reply.get("from") not in ("gpt", "assistant"):
                break
            want = fixed_output or max(1, count_tokens(str(reply.get("value", ""))))
            pairs.append(Turn(str(ask.get("value", "")), want))
            if not multi_turn:
                break
        if pairs and pairs[0].prompt.strip():
            sessions.append(Session(tuple(pairs)))
    return sessions


def load_sharegpt(
    path: str | Path | None, *, seed: int = 0, multi_turn: bool = False, fixed_output: int | None = None
) -> tuple[Workload, int]:
    """A workload from a ShareGPT-format JSON file (list of {"conversations": [{"from", "value"}]}).

    Output lengths follow the recorded replies (as vLLM does) unless `fixed_output` is set.
    `path=None` loads the small sample shipped with tokenway. Returns (workload, distinct sessions).
    """
    if path is None:
        text = resources.files("tokenway.bench").joinpath("data", SAMPLE_DATASET).read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    records = json.loads(text)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of ShareGPT records")
    sessions = _sharegpt_sessions(records, multi_turn=multi_turn, fixed_output=fixed_output)
    if not sessions:
        raise ValueError(f"{path or SAMPLE_DATASET}: no usable conversations (need human/gpt turns)")
    random.Random(seed).shuffle(sessions)

    def make(index: int) -> Session:
        return sessions[index % len(sessions)]

    return make, len(sessions)
