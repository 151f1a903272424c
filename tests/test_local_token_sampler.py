"""The llama engine's next-token choice over a logits row (numpy, no model needed)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tokenway.providers.local.engine import SamplingParams
from tokenway.providers.local.token_sampler import TokenSampler

LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.2, 0.05], dtype=np.float32))


def draws(n: int = 4000, **params: object) -> Counter[int]:
    sampler = TokenSampler(SamplingParams(max_tokens=1, **params), len(LOGITS))  # type: ignore[arg-type]
    return Counter(sampler.sample(LOGITS) for _ in range(n))


def test_greedy_is_the_first_maximum_after_the_bias() -> None:
    tied = np.array([0.0, 2.0, 2.0, 1.0], dtype=np.float32)
    assert TokenSampler(SamplingParams(max_tokens=1, temperature=0.0), 4).sample(tied) == 1
    biased = TokenSampler(SamplingParams(max_tokens=1, temperature=0.0, logit_bias={3: 5.0, 1: -100.0}), 4)
    assert biased.sample(tied) == 3
    assert tied.tolist() == [0.0, 2.0, 2.0, 1.0]  # the caller's row is left alone


def test_draws_follow_the_softmax_and_a_seed_repeats_them() -> None:
    counts = draws(temperature=1.0, seed=1)
    for token, p in enumerate([0.05, 0.4, 0.3, 0.2, 0.05]):
        assert abs(counts[token] / 4000 - p) < 0.03
    assert draws(200, temperature=1.0, seed=7) == draws(200, temperature=1.0, seed=7)
    sharp = draws(temperature=0.05, seed=1)
    assert sharp[1] > 3900  # a low temperature is nearly greedy


def test_top_k_and_top_p_keep_only_the_head() -> None:
    assert set(draws(temperature=1.0, top_k=2, seed=1)) == {1, 2}
    assert set(draws(temperature=1.0, top_p=0.65, seed=1)) == {1, 2}  # 0.4 + 0.3 reaches 0.65
    assert set(draws(temperature=1.0, top_p=0.01, seed=1)) == {1}  # always at least one
    assert set(draws(temperature=1.0, top_k=3, top_p=0.5, seed=1)) == {1, 2}
    assert draws(temperature=1.0, logit_bias={0: -100.0, 4: -100.0}, seed=1).keys() <= {1, 2, 3}


def test_ids_outside_the_vocabulary_and_negative_seeds_are_harmless() -> None:
    assert draws(temperature=0.0, logit_bias={50256: 100.0, -1: 100.0, 2: 100.0}) == Counter({2: 4000})
    assert draws(200, temperature=1.0, seed=-5) == draws(200, temperature=1.0, seed=-5)
