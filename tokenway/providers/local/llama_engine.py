"""The llama.cpp engine: a GGUF model on CPU, many requests decoded together in one batch.

Loading, tokenizing and the chat template live here; the batching decode loop lives in
``llama_scheduler`` on its own thread. ``generate`` bridges that thread to asyncio: the decode
thread hands the tokens of each step to the requests' ``asyncio.Queue`` with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import llama_cpp as llama

from tokenway.config import Settings
from tokenway.errors import Overloaded
from tokenway.providers.local.chat_template import ChatTemplate
from tokenway.providers.local.engine import EngineLoad, GenerationRequest, SamplingParams, TokenPiece
from tokenway.providers.local.llama_scheduler import BatchScheduler
from tokenway.providers.local.model_files import resolve_gguf
from tokenway.providers.local.options import LocalOptions
from tokenway.providers.local.requantize import converted_copy

log = logging.getLogger(__name__)

# Tokens decoded in one step when nothing else says: big enough that a prompt is prefilled in a
# few steps, small enough that decoding sequences wait at most one chunk (~100 ms here).
DEFAULT_BATCH_TOKENS = 256
# KV cells in 8-bit: half the memory of f16 (8 slots x 2048 tokens of SmolLM2-135M: 190 MB
# instead of 380 MB) with no measurable change in output quality; needs flash attention.
KV_TYPE = llama.GGML_TYPE_Q8_0

_GGML_LEVELS = {2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    log.log(_GGML_LEVELS.get(level, logging.DEBUG), "%s", text.decode(errors="replace").rstrip())


# llama.cpp keeps this pointer for the life of the process, so the ctypes callback object must
# never be collected: it lives in the module and is registered once.
_LOG_CALLBACK = llama.llama_log_callback(_forward_llama_log)


def _init_llama() -> None:
    llama.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    llama.llama_backend_init()


class LlamaEngine:
    """``Engine`` over llama-cpp-python's low-level API (one context, one sequence per request)."""

    sampling_features = frozenset({"top_k", "logit_bias"})

    def __init__(self, options: LocalOptions) -> None:
        self.options = options
        self.context_window = options.context_window
        self.model_path: Path | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._template: ChatTemplate | None = None
        self._add_bos = False
        self._bos_text = ""
        self._scheduler: BatchScheduler | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        source = resolve_gguf(self.options.model_path)
        self.model_path = source
        if self.options.model_path is None and self.options.requantize != "off":
            self.model_path = await asyncio.to_thread(self._converted, source, self.options.requantize)
        await asyncio.to_thread(self._load)
        if self.options.warmup:
            await self._warm_up()

    def _converted(self, source: Path, file_type: str) -> Path:
        """The bundled model in a format llama.cpp batches well, or ``source`` if that fails."""
        _init_llama()  # the quantizer logs too
        directory = self.options.requantize_dir
        where = Path(directory).expanduser() if directory else Settings().data_dir / "models"
        try:
            return converted_copy(source, where, file_type)
        except (OSError, RuntimeError) as exc:
            log.warning("serving %s as shipped: no %s copy (%s). Batched decoding will be ~2x slower; "
                        "make %s writable, or set requantize: off to silence this.", source, file_type, exc, where)
            return source

    def _load(self) -> None:
        started = time.perf_counter()
        _init_llama()
        model_params = llama.llama_model_default_params()
        # Read the weights into memory rather than mapping the file: tensors repacked at load are
        # copied out of the mapping, and its pages, read once, would stay resident as well (+57 MB).
        model_params.load_mode = llama.LLAMA_LOAD_MODE_NONE
        self._model = llama.llama_model_load_from_file(str(self.model_path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.model_path}: is it a valid GGUF file?")
        self._vocab = llama.llama_model_get_vocab(self._model)
        trained = llama.llama_model_n_ctx_train(self._model)
        if self.context_window > trained:
            log.warning("context_window %d exceeds the %d tokens %s was trained on",
                        self.context_window, trained, self.model_path)
        options = self.options
        slots = options.slots
        kv_cells = slots * self.context_window  # per-sequence streams: see llama_scheduler
        batch_tokens = max(options.max_batch_tokens or DEFAULT_BATCH_TOKENS, slots)
        threads = options.threads or len(os.sched_getaffinity(0))
        params = llama.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_seq_max = slots
        params.kv_unified = False  # one stream of context_window cells per slot
        params.type_k = KV_TYPE
        params.type_v = KV_TYPE
        params.n_batch = batch_tokens
        params.n_ubatch = batch_tokens
        params.n_outputs_max = slots  # at most one sampled row per sequence per step: small buffers
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED  # faster on CPU; 8-bit KV needs it
        params.no_perf = True
        self._ctx = llama.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a {kv_cells}-token context for {self.model_path}")
        self._template = ChatTemplate(
            self._meta("tokenizer.chat_template"),
            bos_token=self._token_text(llama.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(llama.llama_vocab_eos(self._vocab)),
        )
        self._add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._template.bos_token
        self._scheduler = BatchScheduler(
            self._ctx, self._vocab, slots=slots, queue_size=options.queue_size,
            context_window=self.context_window, batch_tokens=batch_tokens,
        )
        self._scheduler.start()
        log.info("loaded %s in %.2fs: %d slots, %d KV cells, %d threads",
                 self.model_path, time.perf_counter() - started, slots, kv_cells, threads)

    async def _warm_up(self) -> None:
        # The first decodes of each batch shape are slow (buffer allocation, page faults of the
        # mapped weights); run a single and a two-sequence batch before taking traffic.
        prompt = self.chat_prompt([{"role": "user", "content": "Hello"}])

        async def one(seed: int) -> None:
            request = GenerationRequest(prompt, SamplingParams(max_tokens=4, temperature=0.0, seed=seed))
            async for _ in self.generate(request):
                pass

        await one(0)
        await asyncio.gather(one(1), one(2))

    async def aclose(self) -> None:
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
            self._scheduler = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    # ---- prompts ------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        assert self._template is not None, "start() the engine first"
        text = self._template.render(messages)
        # Templates that write the BOS token themselves must not get a second one.
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self._tokenize(text, add_special=add_bos)

    def text_prompt(self, prompt: str) -> list[int]:
        return self._tokenize(prompt, add_special=True)

    def detokenize(self, tokens: list[int]) -> str:
        """Text of ``tokens`` (special tokens rendered as nothing), as the model would print them."""
        assert self._vocab is not None, "start() the engine first"
        array = (llama.llama_token * len(tokens))(*tokens)
        size = max(64, 8 * len(tokens))
        buf = ctypes.create_string_buffer(size)
        n = llama.llama_detokenize(self._vocab, array, len(tokens), buf, size, False, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_detokenize(self._vocab, array, len(tokens), buf, -n, False, False)
        return buf.raw[:n].decode(errors="replace")

    def _tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 2
        array = (llama.llama_token * capacity)()
        # parse_special: control tokens written in the text (<|im_start|>) are tokens, as in HF.
        n = llama.llama_tokenize(self._vocab, data, len(data), array, capacity, add_special, True)
        if n < 0:
            capacity = -n
            array = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._vocab, data, len(data), array, capacity, add_special, True)
        return list(array[:n])

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode(errors="replace")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = llama.llama_vocab_get_text(self._vocab, token)
        return text.decode(errors="replace") if text else ""

    # ---- generation ---------------------------------------------------------------------------

    def load(self) -> EngineLoad:
        assert self._scheduler is not None, "start() the engine first"
        return self._scheduler.load()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenPiece]:
        """Tokens as decoded; raises ``Overloaded`` (queue full or deadline) before the first."""
        scheduler = self._scheduler
        if scheduler is None:
            raise Overloaded("The local model is not loaded (starting or shut down).", retry_after=1.0)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenPiece | BaseException] = asyncio.Queue()
        seq = scheduler.submit(request, loop, queue.put_nowait)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Finished, failed or abandoned by the consumer: the decode thread drops the sequence
            # at its next step and clears its KV cells.
            scheduler.cancel(seq)
