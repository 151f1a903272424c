"""``greedy_steps`` on stand-ins for the manager's parts (the real manager: test_local_transformers.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tokenway.providers.local import greedy_steps


def manager(log: list[Any], *, graphed: bool = False) -> Any:
    processors = SimpleNamespace(do_processing=True)
    runner = SimpleNamespace(do_sample=True, return_logprobs=False, pad_inputs=graphed)
    runner.compute_batch = lambda model, data: log.append((runner.do_sample, processors.do_processing))
    ios = SimpleNamespace(requests_in_batch=[])
    processor = SimpleNamespace(inputs_and_outputs=ios, model_runner=runner, logit_processor=processors)
    return SimpleNamespace(batch_processor=processor)


def row(top_p: float, has_new_token: bool = True) -> Any:
    return SimpleNamespace(has_new_token=has_new_token, state=SimpleNamespace(logit_processor_kwargs={"top_p": top_p}))


def step(m: Any, rows: list[Any]) -> None:
    m.batch_processor.inputs_and_outputs.requests_in_batch = rows
    m.batch_processor.model_runner.compute_batch(None, {})


@pytest.mark.parametrize(
    ("rows", "sampled"),
    [
        ([row(0.0), row(0.0), row(0.9, has_new_token=False)], False),  # a prefill chunk samples nothing
        ([row(0.0), row(0.9)], True),
        ([row(0.9)], True),
    ],
)
def test_a_step_samples_only_when_one_of_its_rows_does(rows: list[Any], sampled: bool) -> None:
    log: list[Any] = []
    m = manager(log)
    assert greedy_steps.install(m) is True
    step(m, rows)
    assert log == [(sampled, sampled)]


def test_each_step_decides_afresh() -> None:
    log: list[Any] = []
    m = manager(log)
    greedy_steps.install(m)
    for rows in ([row(0.0)], [row(0.0), row(1.0)], [row(0.0)]):
        step(m, rows)
    assert log == [(False, False), (True, True), (False, False)]


def test_graphed_or_compiled_steps_are_left_alone() -> None:
    # A CUDA graph replays the branch it was captured with: switching flags would not reach it.
    log: list[Any] = []
    m = manager(log, graphed=True)
    assert greedy_steps.install(m) is False
    step(m, [row(0.0)])
    assert log == [(True, True)]


def test_a_manager_that_was_not_warmed_up_is_refused() -> None:
    with pytest.raises(RuntimeError, match="warmed-up manager"):
        greedy_steps.install(SimpleNamespace(batch_processor=None))
