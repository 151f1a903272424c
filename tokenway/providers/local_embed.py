"""``provider: local-embed``: the bundled all-MiniLM-L6-v2 answering ``/v1/embeddings`` on the CPU.

The model is the semantic cache's (``tokenway.cache.semantic.Embedder``: the bundled weights, run
by ONNX Runtime), loaded off the event loop when the deployment starts. Concurrent requests are
batched (``tokenway.embeddings.batcher``): one model call per batch, on a worker thread. Vectors
are 384 floats of unit length; ``dimensions`` shortens them (truncated, made unit length again).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from tokenway.config import DeploymentConfig
from tokenway.context import RequestContext
from tokenway.embeddings.schema import items
from tokenway.errors import InvalidRequest, Overloaded, UpstreamError, UpstreamUnavailable
from tokenway.providers.base import Answer, Call, ProviderOptions, ProviderResources, not_served

if TYPE_CHECKING:
    from tokenway.cache.semantic import Embedder
    from tokenway.embeddings.batcher import DynamicBatcher

MODEL_NAME = "all-MiniLM-L6-v2"


class LocalEmbedOptions(ProviderOptions):
    max_batch: Annotated[int, Field(ge=1, le=2048)] = 64  # texts in one model call
    # How long the first request of a batch waits for others to join it (none while the model is busy:
    # the next batch gathers meanwhile). 0: batches form only from requests that arrived during a call.
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    workers: Annotated[int, Field(ge=1, le=64)] = 1  # batches encoded at once, one CPU thread each


class LocalEmbedProvider:
    """The local embedding model behind OpenAI's embeddings API (chat and completions: a 400)."""

    Options: ClassVar[type[ProviderOptions]] = LocalEmbedOptions

    def __init__(self, deployment: DeploymentConfig, options: ProviderOptions, resources: ProviderResources) -> None:
        assert isinstance(options, LocalEmbedOptions)
        self.deployment = deployment
        self.options = options
        self.embedder: Embedder | None = None
        self.batcher: DynamicBatcher | None = None
        self.width = 0  # the model's vector size, known once loaded
        self._failed: str | None = None  # why the model did not load

    async def start(self) -> None:
        from tokenway.cache.semantic import Embedder
        from tokenway.embeddings.batcher import DynamicBatcher

        try:
            embedder = await asyncio.to_thread(Embedder.load)
        except Exception as exc:  # the gateway logs it and serves its other models; calls here say why
            self._failed = str(exc)
            raise
        self.width = int(embedder.encode(["width"]).shape[1])
        self.embedder = embedder
        options = self.options
        self.batcher = DynamicBatcher(embedder.encode_items, options.max_batch, options.max_wait_ms / 1000,
                                      options.workers)
        self.batcher.start()

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
        if self.embedder is not None:
            self.embedder.close()

    async def models(self) -> list[str]:
        return [self.deployment.model or MODEL_NAME]

    async def chat(self, call: Call, ctx: RequestContext) -> Answer:
        raise not_served(call, self.deployment.name)

    async def completions(self, call: Call, ctx: RequestContext) -> Answer:
        raise not_served(call, self.deployment.name)

    async def embeddings(self, call: Call, ctx: RequestContext) -> Answer:
        from tokenway.embeddings.vectors import answer, check_dimensions  # numpy: imported once a model is used

        if self._failed is not None:
            raise UpstreamUnavailable(f"The local embedding model did not start: {self._failed}")
        if self.batcher is None or self.embedder is None:
            raise Overloaded("The local embedding model is still loading; retry shortly.", retry_after=2)
        body = call.body
        check_dimensions(body.get("dimensions"), self.width)  # before the model runs
        inputs = items(body)
        vocab = self.embedder.vocab_size
        for i, item in enumerate(inputs):
            if isinstance(item, list) and max(item) >= vocab:
                where = "input" if isinstance(body["input"][0], int) else f"input[{i}]"
                raise InvalidRequest(f"A token id in '{where}' is not in this model's vocabulary (ids 0 to "
                                     f"{vocab - 1}); token arrays are ids of the model's own tokenizer.",
                                     param=where, code="invalid_value")
        try:
            vectors, tokens = await self.batcher.encode(inputs)
        except Exception as exc:
            raise UpstreamError(f"The local embedding model failed: {exc}.") from exc
        return answer(vectors, body, sum(tokens))
