"""The transformers engine: a Hugging Face model folder decoded with transformers' continuous batching.

``ContinuousBatchingManager`` owns a background thread that schedules every request into one
paged-attention batch per step (prefill chunks and decode tokens together), so many requests are
decoded together and new ones join as others finish. This module adapts it to the ``Engine``
protocol: requests are submitted from the event loop (a non-blocking queue put), and each step's
outputs come back through the manager's per-request handlers, which it calls on our loop with
``call_soon_threadsafe`` (one call per step for the whole batch). Nothing here blocks the loop.

Admission is the engine's: at most ``slots`` requests in the batch, ``queue_size`` more waiting
(FIFO, each until its deadline), then 503. The KV cache is sized from the options, never from
free memory: ``kv_cache_tokens``, by default room for every slot at a full context window (plus
the scheduler's 15% safety margin), and ``max_batch_tokens`` (default 512 on CPU, 8192 on GPU).
The manager's own default on CPU would take about 6.5 GB.

Sampling: temperature and top_p are applied per request (transformers' per-request logits
processors). Greedy decoding (temperature 0) is top_p 0, which keeps exactly the most likely
token; a step whose requests are all greedy takes an argmax instead (``greedy_steps``). A per-request
``seed`` cannot be honoured inside a shared batch; greedy output is deterministic regardless.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenway.errors import InvalidRequest, Overloaded, UpstreamError
from tokenway.providers.local import greedy_steps
from tokenway.providers.local.engine import EngineLoad, GenerationRequest, SamplingParams, TokenPiece
from tokenway.providers.local.greedy_steps import GREEDY_TOP_P
from tokenway.providers.local.options import LocalOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from transformers.generation.continuous_batching import ContinuousBatchingManager

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# A handler of a cancelled request is kept this long, in case the cancellation reached the manager's
# thread before the request itself did (it drains new requests and cancellations in one step, so an
# add and a cancel that straddle that drain leave a live request): such a request is cancelled
# again on its first output. After this, nothing more can arrive.
CANCEL_GRACE_S = 60.0
RETRY_AFTER_S = 1.0
# transformers' FIFO scheduler admits no new prefill once fewer than 15% of the blocks are free.
SCHEDULER_SAFETY_MARGIN = 0.15


class Slots:
    """At most ``slots`` requests in the batch, ``queue_size`` more waiting in FIFO order, each until
    its deadline. The manager would accept any number of requests, but its KV cache is sized for
    ``slots`` sequences: beyond that, requests would thrash the cache instead of waiting here."""

    def __init__(self, slots: int, queue_size: int) -> None:
        self.slots = slots
        self.queue_size = queue_size
        self.free = slots
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def running(self) -> int:
        return self.slots - self.free

    async def acquire(self, deadline: float | None) -> None:
        """Take a slot, waiting until ``deadline`` (monotonic); ``Overloaded`` when none comes."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        if len(self.waiters) >= self.queue_size:
            raise Overloaded(
                f"The local model is busy: all {self.slots} slots and {self.queue_size} queue places "
                "are taken. Retry later.",
                retry_after=RETRY_AFTER_S,
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(granted)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait({granted}, timeout=timeout)
        except BaseException:  # the caller went away while waiting
            if granted.done() and not granted.cancelled():
                self.release()  # the slot came just then: pass it on
            else:
                self.waiters.remove(granted)
                granted.cancel()
            raise
        if not granted.done():
            self.waiters.remove(granted)
            granted.cancel()
            raise Overloaded(
                f"The local model is busy: no slot freed up within {timeout:.1f} s. Retry later.",
                retry_after=RETRY_AFTER_S,
            )

    def release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        while self.waiters:
            granted = self.waiters.popleft()
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1


class TransformersEngine:
    """Continuous batching over a transformers model on CPU or GPU (see the module docstring)."""

    def __init__(self, options: LocalOptions) -> None:
        if not options.model_path:
            raise ValueError(
                "engine 'transformers' needs model_path: a Hugging Face model folder "
                "(config.json, tokenizer files, and weights unless load_format is 'dummy')"
            )
        self.options = options
        self.context_window = options.context_window
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._manager: ContinuousBatchingManager | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self._ids = itertools.count()
        self._slots = Slots(options.slots, options.queue_size)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and tokenizer, allocate the KV cache, start the batching thread, warm up."""
        await asyncio.to_thread(self._load)
        if self.options.warmup:
            # A first real request through the whole path: kernels, allocator and tokenizer get warm.
            prompt = self.text_prompt("Hello")
            async for _ in self.generate(_warmup_request(prompt)):
                pass

    async def aclose(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            await asyncio.to_thread(_stop_manager, manager)
        self._model = None

    # -- prompts -----------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        tokenizer = self._require_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest(
                f"the model folder {self.options.model_path} has no chat template "
                "(chat_template in tokenizer_config.json or chat_template.jinja): use /v1/completions"
            )
        text = tokenizer.apply_chat_template(
            [_plain_message(m) for m in messages], add_generation_prompt=True, tokenize=False
        )
        # The template already holds the special tokens it wants (BOS included): add none.
        return list(tokenizer.encode(text, add_special_tokens=False))

    def text_prompt(self, prompt: str) -> list[int]:
        return list(self._require_tokenizer().encode(prompt, add_special_tokens=True))

    # -- generation --------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenPiece, None]:
        """Tokens as the batching thread decodes them; closing this iterator cancels the request.

        Raises ``Overloaded`` before the first token when no slot frees up by ``request.deadline``
        or the queue is full, and ``InvalidRequest`` when the prompt leaves no room in the window.
        """
        self._require_manager()
        prompt = request.prompt_tokens
        params = request.params
        room = self.context_window - len(prompt)
        if not prompt or room < 1:
            raise InvalidRequest(
                f"the prompt has {len(prompt)} tokens; this model's context window is "
                f"{self.context_window} tokens, prompt and completion together",
                param="messages",
                code="context_length_exceeded",
            )
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self._eos_ids
        greedy = params.temperature <= 0.0
        await self._slots.acquire(request.deadline)
        try:
            # aclosing: closing this generator must close the inner one now (its finally cancels).
            async with aclosing(self._decode(prompt, params, stop_ids, greedy, room)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            self._slots.release()

    async def _decode(
        self,
        prompt: list[int],
        params: SamplingParams,
        stop_ids: set[int],
        greedy: bool,
        room: int,
    ) -> AsyncGenerator[TokenPiece, None]:
        manager = self._require_manager()  # again: it may have closed while this request waited
        request_id = f"tw-{next(self._ids)}"
        outputs: asyncio.Queue[Any] = asyncio.Queue()  # bounded by max_tokens: one entry per step
        manager.register_result_handler(request_id, outputs.put_nowait)
        accepted = manager.add_request(
            input_ids=prompt,
            request_id=request_id,
            max_new_tokens=min(params.max_tokens, room),
            streaming=True,
            eos_token_id=sorted(stop_ids) or -1,  # -1: no end-of-sequence token at all
            temperature=1.0 if greedy else float(params.temperature),
            top_p=GREEDY_TOP_P if greedy else float(params.top_p),
        )
        if accepted is None:
            self._forget(request_id)
            raise Overloaded("the local model's batching thread is stopped or has failed; see the server log")

        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream(skip_special_tokens=True)
        backend = self._require_tokenizer().backend_tokenizer
        sent = 0
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                if output.error is not None:
                    finished = True
                    raise UpstreamError(f"the local model failed while generating: {output.error}")
                tokens = output.generated_tokens
                finished = output.is_finished()
                last = len(tokens) - 1
                for index in range(sent, len(tokens)):
                    token = tokens[index]
                    reason = None
                    if finished and index == last:
                        reason = "stop" if token in stop_ids else "length"
                    yield TokenPiece(token, _step(decoder, backend, token), reason)
                sent = len(tokens)
        finally:
            if not finished:
                self._cancel(request_id)

    # -- introspection (metrics, tests) --------------------------------------------------------------

    def load(self) -> EngineLoad:
        """Requests holding a slot and waiting for one; KV-cache cells in use (whole blocks)."""
        manager = self._manager
        processor = manager.batch_processor if manager is not None else None
        kv_used = kv_total = 0
        if processor is not None:
            cache = processor.cache
            kv_total = cache.num_blocks * cache.block_size
            kv_used = kv_total - cache.get_num_free_blocks() * cache.block_size
        return EngineLoad(
            running=self._slots.running,
            waiting=len(self._slots.waiters),
            slots=self._slots.slots,
            kv_used=kv_used,
            kv_total=kv_total,
        )

    # -- internals -----------------------------------------------------------------------------------

    def _cancel(self, request_id: str) -> None:
        manager = self._manager
        if manager is None:
            return
        manager.cancel_request(request_id)

        def straggler(_output: Any) -> None:
            # See CANCEL_GRACE_S: the request reached the thread after its cancellation did.
            manager.cancel_request(request_id)

        router = manager.output_router
        with router._lock:
            if request_id in router.result_handlers:
                router.result_handlers[request_id] = (straggler, asyncio.get_running_loop())
        asyncio.get_running_loop().call_later(CANCEL_GRACE_S, self._forget, request_id)

    def _forget(self, request_id: str) -> None:
        manager = self._manager
        if manager is not None:
            with manager.output_router._lock:
                manager.output_router.result_handlers.pop(request_id, None)

    def _require_manager(self) -> ContinuousBatchingManager:
        if self._manager is None:
            raise Overloaded("the local model is not loaded yet (or is shutting down)", retry_after=1.0)
        return self._manager

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise Overloaded("the local model is not loaded yet", retry_after=1.0)
        return self._tokenizer

    def _load(self) -> None:
        """Blocking: runs in a worker thread during start()."""
        try:
            import torch
            from transformers import AutoConfig, AutoTokenizer, ContinuousBatchingConfig, GenerationConfig
        except ImportError as exc:
            raise RuntimeError(
                "engine 'transformers' needs torch and transformers: pip install 'tokenway[transformers]'"
            ) from exc
        from transformers.generation.continuous_batching.utils import WorkloadHints

        options = self.options
        folder = _model_folder(options)
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        device = torch.device(options.device)
        dtype = _resolve_dtype(options.dtype, device)

        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        model_window = getattr(config, "max_position_embeddings", None)
        if model_window:
            self.context_window = min(options.context_window, int(model_window))
        model: Any = _load_model(folder, config, options.load_format, device, dtype)
        self._model = model
        self._eos_ids = frozenset(_eos_ids(config, self._tokenizer))

        block_size = 256 if device.type == "cuda" else 32  # 256: what flash's paged decode path needs
        if options.kv_cache_tokens:
            num_blocks = math.ceil(options.kv_cache_tokens / block_size)
        else:
            # Room for every slot at a full context window, above the scheduler's safety margin.
            per_request = math.ceil(self.context_window / block_size)
            num_blocks = math.ceil(options.slots * per_request / (1 - SCHEDULER_SAFETY_MARGIN))
        max_batch_tokens = options.max_batch_tokens or (8192 if device.type == "cuda" else 512)
        cb_config = ContinuousBatchingConfig(
            block_size=block_size,
            num_blocks=num_blocks,
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=options.slots,
            per_request_processors=True,
            max_queue_size=0,  # the provider bounds the queue (slots + queue_size); never block a put
        )
        # Both warpers must exist at creation for per-request values to apply: non-neutral defaults.
        generation_config = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            top_k=0,
            max_new_tokens=16,
            eos_token_id=sorted(self._eos_ids) or None,
            pad_token_id=self._tokenizer.pad_token_id,
        )
        hints = WorkloadHints(max_prompt_length=self.context_window, max_generated_length=0, num_requests=options.slots)
        manager = model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config, workload_hints=hints
        )
        # Allocates the cache here, so that running out of memory fails start() instead of the thread;
        # on GPU it also captures CUDA graphs when the attention implementation uses them.
        manager.warmup()
        argmax = greedy_steps.install(manager)
        manager.start()
        self._manager = manager
        log.info(
            "transformers engine ready: %s on %s (%s, %s), attention %s, KV cache %d tokens, "
            "%d slots, %d tokens per batch, all-greedy steps by argmax: %s",
            folder,
            device,
            dtype,
            options.load_format,
            model.config._attn_implementation,
            num_blocks * block_size,
            options.slots,
            max_batch_tokens,
            "yes" if argmax else "no (graphed or compiled steps)",
        )


def _model_folder(options: LocalOptions) -> Path:
    folder = Path(options.model_path or "").expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model_path {folder} is not a Hugging Face model folder (no config.json there): "
            "point it at a folder with config.json and tokenizer files, e.g. one saved with "
            "`huggingface-cli download <repo> --local-dir <folder>`"
        )
    if options.load_format == "auto" and not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        raise FileNotFoundError(
            f"model_path {folder} holds no weight files (*.safetensors, *.bin): add them, "
            "or set load_format: dummy for random weights (benchmarks only)"
        )
    return folder


def _resolve_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        # bf16 halves memory and doubles speed on GPUs; on CPU fp32 is the safe, exact default.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _load_model(folder: Path, config: Any, load_format: str, device: Any, dtype: Any) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model: Any
    # "sdpa": the manager switches it to paged|sdpa, or to flash attention where that is installed.
    if load_format == "dummy":
        # Random weights, initialised directly on the device (seconds for 8B on a GPU).
        with device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device, attn_implementation="sdpa")
    return model.eval()


def _eos_ids(config: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(v for v in value if isinstance(v, int))
    return {i for i in ids if i >= 0}


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates expect text content: join OpenAI content parts into one string."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return {**message, "content": text}
    if content is None:
        return {**message, "content": ""}
    return message


def _step(decoder: Any, backend: Any, token: int) -> str:
    """The text this token adds ('' while a UTF-8 sequence is incomplete, or for special tokens)."""
    try:
        return decoder.step(backend, token) or ""
    except Exception:  # an id past the tokenizer's vocabulary (padded embedding rows): no text
        return ""


def _stop_manager(manager: ContinuousBatchingManager) -> None:
    manager.stop(block=True, timeout=30, hard_stop=True)
    manager.destroy()


def _warmup_request(prompt: list[int]) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=prompt, params=SamplingParams(max_tokens=2, temperature=0.0))
