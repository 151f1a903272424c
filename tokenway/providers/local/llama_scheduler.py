"""Continuous batching over one llama.cpp context, on a dedicated decode thread.

Every sequence (one request) holds its tokens so far (prompt, then generated) and how many of
them are already in the KV cache; the input still to feed is ``tokens[n_past:]``. Each step
builds one ``llama_batch`` with a token for every decoding sequence and prefill chunks of newly
admitted ones, decodes it once, and samples the next token of each sequence whose input is all
fed, with that sequence's own ``TokenSampler``. Requests are admitted as others finish.

Each slot owns ``context_window`` cells of the KV cache (llama.cpp's per-sequence streams, not
the unified cache). That costs memory for the worst case, but every sequence then sees the same
cell layout whoever else is in the batch, so a greedy answer is the same under load as alone;
with one shared pool of cells the placement, and with it the float rounding of attention,
depends on the other requests, and identical prompts in one batch come out different. It also
means an admitted request can never run out of cells.

Results reach the event loop of each request with one ``loop.call_soon_threadsafe`` per step
(not per token): every wake-up of the event loop thread takes a core from the decode threads.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from asyncio import AbstractEventLoop
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp as llama
import numpy as np

from tokenway.errors import GatewayError, Overloaded, UpstreamError
from tokenway.providers.local.engine import EngineLoad, GenerationRequest, SamplingParams, TokenPiece
from tokenway.providers.local.token_sampler import TokenSampler

log = logging.getLogger(__name__)

Item = TokenPiece | BaseException
Put = Callable[[Item], None]

# How long a client that found the queue full should wait before trying again (seconds).
RETRY_AFTER_S = 1.0


class Sequence:
    """One request's state while queued or decoding; touched by the decode thread only,
    except ``cancelled``, which the consumer sets."""

    __slots__ = (
        "cancelled", "deadline", "decoder", "generated", "loop", "n_fed", "n_past", "params", "put",
        "sampler", "seq_id", "tokens",
    )

    def __init__(self, request: GenerationRequest, loop: AbstractEventLoop, put: Put, n_vocab: int) -> None:
        self.params: SamplingParams = request.params
        self.tokens: list[int] = list(request.prompt_tokens)
        self.deadline = request.deadline
        self.loop = loop  # the consumer's event loop, and how to hand it an item (on that loop)
        self.put = put
        self.n_past = 0  # tokens of ``tokens`` already in the KV cache
        self.n_fed = 0  # tokens added to the batch being decoded
        self.seq_id = -1
        self.sampler = TokenSampler(request.params, n_vocab)
        self.generated = 0
        self.cancelled = False
        # Token pieces can split a UTF-8 character; text is released once it is whole.
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")


class BatchScheduler:
    """Owns a llama.cpp context once started; ``submit`` and ``cancel`` are thread-safe."""

    def __init__(
        self, ctx: Any, vocab: Any, *, slots: int, queue_size: int, context_window: int, batch_tokens: int,
    ) -> None:
        self._ctx = ctx
        self._mem = llama.llama_get_memory(ctx)
        self._vocab = vocab
        self._n_vocab = llama.llama_vocab_n_tokens(vocab)
        self._slots = slots
        self._queue_size = queue_size
        self._context_window = context_window
        self._batch_tokens = max(batch_tokens, slots)
        self._batch = llama.llama_batch_init(self._batch_tokens, 0, 1)
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._free_ids = list(range(slots - 1, -1, -1))
        self._pieces: dict[int, bytes] = {}
        self._outbox: list[tuple[Sequence, Item]] = []
        self._stopping = False
        self._broken: GatewayError | None = None
        self._thread = threading.Thread(target=self._run, name="tokenway-llama-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Fail what is still queued or running, end the thread, free the batch."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        llama.llama_batch_free(self._batch)

    def load(self) -> EngineLoad:
        with self._cond:
            return EngineLoad(
                running=len(self._running), waiting=len(self._waiting), slots=self._slots,
                kv_used=sum(seq.n_past for seq in self._running),
                kv_total=self._slots * self._context_window,
            )

    def submit(self, request: GenerationRequest, loop: AbstractEventLoop, put: Put) -> Sequence:
        """Queue a request; raises ``Overloaded`` when every slot and queue place is taken.

        ``put`` receives its token pieces, then an exception if it fails; it is called on ``loop``.
        """
        seq = Sequence(request, loop, put, self._n_vocab)
        with self._cond:
            if self._broken is not None:
                raise self._broken
            if self._stopping:
                raise Overloaded("The local model is shutting down.", retry_after=RETRY_AFTER_S)
            if len(self._running) + len(self._waiting) >= self._slots + self._queue_size:
                raise Overloaded(
                    f"The local model is busy: all {self._slots} slots and {self._queue_size} queue "
                    "places are taken. Retry later.",
                    retry_after=RETRY_AFTER_S,
                )
            self._waiting.append(seq)
            self._cond.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence: dropped from the queue now, or from the batch at the next step."""
        with self._cond:
            seq.cancelled = True
            if seq.seq_id < 0 and seq in self._waiting:
                self._waiting.remove(seq)
            self._cond.notify()

    # ---- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._admit()  # before expiring: a request that can have a slot now gets it
                    self._expire_waiting()
                    if self._stopping:
                        break
                    if not self._running:
                        self._flush()  # expiry errors, before sleeping
                        self._cond.wait(self._next_deadline_in())
                        continue
                self._flush()
                self._step()
                self._flush()
            self._fail_all(Overloaded("The local model is shutting down.", retry_after=RETRY_AFTER_S))
        except Exception as exc:
            log.exception("the llama decode loop failed")
            broken = UpstreamError(f"The local model failed: {exc}. Restart the gateway.")
            with self._cond:
                self._broken = broken
            self._fail_all(broken)

    def _fail_all(self, error: GatewayError) -> None:
        with self._cond:
            doomed = [*self._running, *self._waiting]
            self._waiting.clear()
        for seq in doomed:
            self._emit(seq, error)
            if seq.seq_id >= 0:
                self._release(seq)
        self._flush()

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for seq in [s for s in self._waiting if s.deadline is not None and s.deadline <= now]:
            self._waiting.remove(seq)
            self._emit(seq, Overloaded(
                f"The local model is busy: no slot became free in time ({len(self._running)} requests "
                f"decoding, {len(self._waiting)} waiting). Retry later.",
                retry_after=RETRY_AFTER_S,
            ))

    def _next_deadline_in(self) -> float | None:
        deadlines = [s.deadline for s in self._waiting if s.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _admit(self) -> None:
        while self._waiting and self._free_ids:
            seq = self._waiting.popleft()
            seq.seq_id = self._free_ids.pop()
            self._running.append(seq)

    def _step(self) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq)
        if not self._running:
            return
        outputs = self._fill_batch()
        rc = llama.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for seq in self._running:
            seq.n_past += seq.n_fed
        for seq, index in outputs:
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
            self._accept(seq, seq.sampler.sample(logits))

    def _fill_batch(self) -> list[tuple[Sequence, int]]:
        """Put this step's tokens in the batch; returns the sequences to sample, by batch index."""
        batch = self._batch
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        # Every decoding sequence gets its one token; prefill chunks share what is left, so they
        # never delay decoding. Sequences go in id order: llama.cpp decodes a batch whose
        # per-sequence KV streams come in order ~30% faster than the same batch shuffled.
        decoding = sum(1 for s in self._running if len(s.tokens) - s.n_past == 1)
        prefill_budget = self._batch_tokens - decoding
        for seq in sorted(self._running, key=_seq_id):
            pending = len(seq.tokens) - seq.n_past
            take = 1 if pending == 1 else min(pending, prefill_budget)
            if pending > 1:
                prefill_budget -= take
            seq.n_fed = take
            for pos in range(seq.n_past, seq.n_past + take):
                batch.token[n] = seq.tokens[pos]
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                batch.logits[n] = 0
                n += 1
            if take and take == pending:
                batch.logits[n - 1] = 1
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        return outputs

    def _accept(self, seq: Sequence, token: int) -> None:
        seq.generated += 1
        params = seq.params
        end_of_generation = not params.ignore_eos and llama.llama_vocab_is_eog(self._vocab, token)
        if end_of_generation or token in params.stop_token_ids:
            self._finish(seq, TokenPiece(token, seq.decoder.decode(b"", final=True), "stop"))
            return
        text = seq.decoder.decode(self._piece(token))
        seq.tokens.append(token)
        if seq.generated >= params.max_tokens or len(seq.tokens) >= self._context_window:
            self._finish(seq, TokenPiece(token, text + seq.decoder.decode(b"", final=True), "length"))
            return
        self._emit(seq, TokenPiece(token, text))

    def _finish(self, seq: Sequence, last: TokenPiece) -> None:
        # Free the slot before the consumer sees the end, so it finds the slot already free.
        self._release(seq)
        self._emit(seq, last)

    def _emit(self, seq: Sequence, item: Item) -> None:
        self._outbox.append((seq, item))

    def _flush(self) -> None:
        """Hand this step's items to their event loops: one wake-up per loop."""
        if not self._outbox:
            return
        by_loop: dict[AbstractEventLoop, list[tuple[Sequence, Item]]] = {}
        for seq, item in self._outbox:
            by_loop.setdefault(seq.loop, []).append((seq, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the consumer's event loop is closed: nobody is listening
                for seq, _ in items:
                    seq.cancelled = True

    def _release(self, seq: Sequence) -> None:
        llama.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        with self._cond:
            self._free_ids.append(seq.seq_id)
            self._running.remove(seq)
        seq.seq_id = -1

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece


def _seq_id(seq: Sequence) -> int:
    return seq.seq_id


def _deliver(items: list[tuple[Sequence, Item]]) -> None:
    for seq, item in items:
        seq.put(item)
