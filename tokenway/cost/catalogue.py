"""The GPUs and open models ``tokenway cost`` knows: shipped YAML in ``tokenway/cost/data``, a user's
GPU file on top (``--gpus FILE``), a model given by flags instead of a name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenway.config import ConfigError, parse_yaml

Positive = Annotated[float, Field(gt=0)]

# Bytes per weight (or per KV-cache element). int4 is AWQ/GPTQ's 4 bits; their group scales add
# about 3 %, inside the memory headroom. q4_1 and q8_0 are llama.cpp's GGUF blocks (32 weights
# with 16-bit scale and offset: 20 and 34 bytes).
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "q8_0": 34 / 32, "int4": 0.5, "q4_1": 20 / 32,
}


class CatalogueError(LookupError):
    """A GPU, model or cloud that is not in the catalogue; the message lists the known ones."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """The published page a figure was checked against, and the date that page gives (or, where it
    gives none, the date it was read)."""

    url: str
    as_of: str


class Checked(_Strict):
    """Figures that are either checked against a published source (``source``, ``verified: true``) or
    plainly marked as not (``verified: false``): ``tokenway cost`` flags the latter beside the option."""

    source: Source | None = None
    verified: bool = False
    note: str = ""  # what was found instead: a secondary source that agrees, a caveat

    @model_validator(mode="after")
    def _verified_needs_a_source(self) -> Checked:
        if self.verified and self.source is None:
            raise ValueError("verified: true needs a source (url and as_of); else say verified: false")
        return self


class CloudPrice(Checked):
    instance: str = ""
    region: str = ""
    on_demand: Positive
    spot: Positive | None = None

    @model_validator(mode="after")
    def _spot_is_a_discount(self) -> CloudPrice:
        if self.spot is not None and self.spot > self.on_demand:
            raise ValueError(f"spot ({self.spot}) is dearer than on_demand ({self.on_demand})")
        return self


class Gpu(Checked):
    memory_gib: Positive
    bandwidth_gbs: Positive
    fp16_tflops: Positive
    prices: dict[str, CloudPrice] = {}


class GpuFile(_Strict):
    prices_as_of: str
    gpus: dict[str, Gpu]


class ModelSpec(Checked):
    params_b: Positive  # billions of parameters
    layers: Annotated[int, Field(ge=1)]
    kv_heads: Annotated[int, Field(ge=1)]
    head_dim: Annotated[int, Field(ge=1)]
    context_length: Annotated[int, Field(ge=1)]
    dtype: str = "bf16"

    def weight_bytes(self, dtype: str) -> float:
        return self.params_b * 1e9 * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, kv_dtype: str) -> float:
        """Keys and values of every layer for one token: 2 x layers x KV heads x head dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[kv_dtype]


class ModelFile(_Strict):
    models: dict[str, ModelSpec]


def _shipped(name: str) -> tuple[str, str]:
    resource = resources.files("tokenway.cost") / "data" / name
    return resource.read_text(encoding="utf-8"), f"tokenway/cost/data/{name}"


def load_gpus(override: Path | None = None) -> GpuFile:
    """The shipped catalogue; with ``override``, that file's GPUs replace or join the shipped ones and
    its ``prices_as_of`` is the one shown."""
    shipped = parse_yaml(*_shipped("gpus.yaml"), GpuFile)
    if override is None:
        return shipped
    try:
        text = override.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{override}: cannot read the GPU file ({exc.strerror})") from None
    mine = parse_yaml(text, str(override), GpuFile)
    return GpuFile(prices_as_of=mine.prices_as_of, gpus={**shipped.gpus, **mine.gpus})


def load_models() -> dict[str, ModelSpec]:
    return parse_yaml(*_shipped("models.yaml"), ModelFile).models


def pick(kind: str, name: str, known: dict[str, object]) -> str:
    """``name`` as the catalogue spells it (matched without regard to case), or an error listing ``known``."""
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    raise CatalogueError(f"Unknown {kind} {name!r}. Known: {', '.join(sorted(known))}.")


def check_dtype(flag: str, dtype: str) -> str:
    if dtype not in DTYPE_BYTES:
        raise CatalogueError(f"Unknown {flag} {dtype!r}. Known: {', '.join(DTYPE_BYTES)}.")
    return dtype
