"""The ``structured_output:`` sections of the YAML config: a gateway-wide default and per-model overrides.

```yaml
structured_output:         # gateway-wide; every field optional
  enabled: true            # false: the policy is not in the list (replies pass unchecked)
  retries: 2               # extra upstream calls after an invalid reply, each told what was wrong
  streams: validate        # validate: relay as it comes, check at the end (an error event if invalid)
                           # buffer: answer in full upstream, check and retry, then replay as a stream
models:
  - name: m
    structured_output: {retries: 1, streams: buffer}
```

A key can ask for buffered streams too (``structured_output: buffer`` on the key), whatever its models say.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

StreamMode = Literal["validate", "buffer"]
Retries = Annotated[int, Field(ge=0, le=10)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StructuredOutputConfig(_Strict):
    enabled: bool = True
    retries: Retries = 2
    streams: StreamMode = "validate"


class ModelStructuredOutputConfig(_Strict):
    """One model's overrides; a field left out takes the gateway-wide value."""

    enabled: bool | None = None
    retries: Retries | None = None
    streams: StreamMode | None = None
