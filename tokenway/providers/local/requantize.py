"""A copy of a GGUF model in a weight format that llama.cpp batches well, made once and reused.

The bundled SmolLM2 file is Q4_1. llama.cpp's CPU backend has no batched (GEMM) kernel for
Q4_1: a step of 8 sequences costs ~4.5x a step of one, so batching barely pays. Q4_0 weights
are repacked at load into interleaved blocks that it multiplies as a batch: 8 sequences cost
~2.5x one, and a prompt prefills ~3x faster. So the engine serves a Q4_0 copy, written by
llama.cpp's own quantizer next to the other data files on first start.

Requantizing already 4-bit weights is not free: the copy's answers differ from the original's
(benchmarks/local_model/README.md measures by how much). ``requantize: off`` serves the file as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import llama_cpp as llama

log = logging.getLogger(__name__)

FILE_TYPES = {"q4_0": llama.LLAMA_FTYPE_MOSTLY_Q4_0}


def converted_copy(source: Path, directory: Path, file_type: str) -> Path:
    """The ``file_type`` copy of ``source`` in ``directory``, written now unless already there.

    The copy is named by a hash of the source's bytes, so a changed source gets a new copy (and
    the stale one is removed). It is written under a temporary name and renamed when complete:
    a crash or a concurrent start never leaves a half-written file under the final name.
    Raises ``RuntimeError`` or ``OSError`` when the copy cannot be made.
    """
    with source.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:16]
    prefix = f"{source.stem}.{file_type}-"
    target = directory / f"{prefix}{digest}.gguf"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(directory)
    partial = directory / f".{target.name}.{os.getpid()}.partial"
    params = llama.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.allow_requantize = True
    started = time.perf_counter()
    try:
        if llama.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not convert {source} to {file_type}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    for stale in directory.glob(f"{prefix}*.gguf"):
        if stale != target:
            stale.unlink(missing_ok=True)
    log.info("wrote a %s copy of %s to %s in %.1fs", file_type, source, target, time.perf_counter() - started)
    return target


def _remove_abandoned(directory: Path) -> None:
    """Delete half-written copies (~90 MB each) left by processes that died while converting."""
    for partial in directory.glob(".*.partial"):
        try:
            os.kill(int(partial.suffixes[-2].lstrip(".")), 0)  # ".<name>.<pid>.partial"
        except (ValueError, IndexError, ProcessLookupError):
            partial.unlink(missing_ok=True)
        except PermissionError:
            continue  # the pid is alive under another user: that conversion may still be running
