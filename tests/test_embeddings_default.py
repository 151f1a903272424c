"""No config at all: ``tokenway serve`` serves the bundled MiniLM as ``local-embed`` beside ``local``,
and the chat-only ``local`` answers an embeddings call with a 400 naming the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai

from tests.servers import free_port, wait_until_ready


def test_the_embedded_default_serves_local_embed(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENWAY_CONFIG", "TOKENWAY_MASTER_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "tokenway", "serve", "--port", str(port)],
                            env={**env, "TOKENWAY_DATA_DIR": str(tmp_path)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, 90, lambda: proc.poll() is None)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"local", "local-embed"}
        floats = client.embeddings.create(model="local-embed", input=["red apple", "green apple", "tax law"],
                                          encoding_format="float")
        decoded = client.embeddings.create(model="local-embed", input=["red apple", "green apple", "tax law"])
        vectors = np.array([d.embedding for d in floats.data], dtype=np.float32)
        assert vectors.shape == (3, 384)
        assert np.array_equal(np.array([d.embedding for d in decoded.data], dtype=np.float32), vectors)
        assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
        try:
            client.embeddings.create(model="local", input="hi")
            raise AssertionError("the chat model served embeddings")
        except openai.BadRequestError as refused:
            assert refused.body["param"] == "model" and "does not serve embeddings" in refused.message  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
