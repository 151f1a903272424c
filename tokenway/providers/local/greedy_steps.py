"""Greedy steps of transformers' ``ContinuousBatchingManager`` take an argmax.

The transformers engine builds its manager to sample, with per-request temperature and top-p
processors, so that each request's values apply. A greedy request is top-p 0, which keeps exactly
its most likely token, but only after a softmax, a full sort of the vocabulary and a cumulative
sum for every row, then a multinomial draw. When every row of a step is greedy, the step skips
the processors and the draw and takes the argmax: the same tokens for less GPU time
(``benchmarks/gpu/sampling_step.py`` times both). A step with any sampled row samples, greedy rows
included, as before.

The choice is made in Python before each step, so it is installed only where steps run eagerly:
a CUDA graph or a compiled step replays whichever branch it was captured with. It relies on the
internals of the pinned transformers version (5.17): ``ContinuousBatchProcessor.model_runner``,
``.inputs_and_outputs.requests_in_batch`` and ``.logit_processor``.
"""

from __future__ import annotations

from typing import Any

GREEDY_TOP_P = 0.0  # the engine's greedy requests: top-p 0 keeps only the most likely token


def install(manager: Any) -> bool:
    """Switch each step of ``manager`` between sampling and argmax; call it after ``warmup()`` (which
    creates the batch processor) and before ``start()`` (which reuses it). False where the steps
    are graphed or compiled, and nothing was installed."""
    processor = manager.batch_processor
    if processor is None:
        raise RuntimeError("greedy_steps.install needs a warmed-up manager (its batch processor exists then)")
    runner = processor.model_runner
    ios = processor.inputs_and_outputs
    processors = processor.logit_processor
    if runner.pad_inputs or runner.return_logprobs or not hasattr(ios, "requests_in_batch"):
        return False  # pad_inputs: CUDA graphs or torch.compile
    samples, processes = runner.do_sample, processors.do_processing
    compute = runner.compute_batch

    def compute_batch(model: Any, batch_data: dict[str, Any]) -> None:
        greedy = _all_greedy(ios.requests_in_batch)
        runner.do_sample = samples and not greedy
        processors.do_processing = processes and not greedy
        compute(model, batch_data)

    runner.compute_batch = compute_batch
    return True


def _all_greedy(requests_in_batch: list[Any]) -> bool:
    # Rows without a new token (a prefill chunk that does not end its prompt) sample nothing.
    for future in requests_in_batch:
        if future.has_new_token and future.state.logit_processor_kwargs.get("top_p") != GREEDY_TOP_P:
            return False
    return True
