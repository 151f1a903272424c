"""The MiniLM forward pass for the semantic cache: ONNX Runtime when installed, torch otherwise.

Both take the tokenizer's numpy arrays and return the last hidden state; pooling is shared.
Measured on the gateway's 2-core box (``benchmarks/semantic_cache``): one short question takes
~6 ms through ONNX Runtime on one thread against ~11 ms through eager torch, with the same
vectors (max difference ~1e-7). The ONNX graph is exported from the bundled torch weights at
startup (about a second), so there is no second copy of the model to ship or keep in step.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Forward = Callable[[dict[str, np.ndarray]], np.ndarray]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def torch_forward(transformer: Any) -> Forward:
    """Eager torch under ``inference_mode``; uses torch's process-wide thread settings."""
    import torch

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            tensors = {name: torch.from_numpy(batch[name]) for name in INPUTS if name in batch}
            hidden: np.ndarray = transformer(**tensors).last_hidden_state.numpy()
        return hidden

    return forward


def onnx_forward(transformer: Any, tokenizer: Any) -> Forward | None:
    """The transformer exported to ONNX and run by ONNX Runtime on the calling thread.

    None when ``onnxruntime`` or ``onnx`` (which torch's exporter needs) is not installed.
    One intra-op thread: a short question is too small to split, and on a small box the other
    core is the event loop's. No spinning, so an idle embedder costs no CPU.
    """
    try:
        import onnx  # noqa: F401  (torch's exporter imports it; fail here, not mid-export)
        import onnxruntime
        import torch
    except ImportError:
        return None

    class LastHidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    # Two texts of different lengths, so padding and the attention mask are part of the trace.
    sample = tokenizer(["warm up", "a longer sample question, padded against the short one"], padding=True,
                       return_tensors="pt")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="tokenway-minilm-") as folder:
        graph = Path(folder) / "minilm.onnx"
        # The tracer warns that the mask's shape checks become constants: for an encoder they are
        # (no cache, a mask always given), and ``Embedder.load`` compares the result with torch's.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(transformer).eval(), tuple(sample[name] for name in INPUTS), graph,
                              dynamo=False, input_names=list(INPUTS), output_names=["last_hidden_state"],
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")},
                              opset_version=17)
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: batch[name].astype(np.int64, copy=False) for name in INPUTS}
        hidden: np.ndarray = session.run(None, feed)[0]
        return hidden

    return forward


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's pooling: mean over real tokens, then unit length (float32)."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return (pooled / norms).astype(np.float32, copy=False)
