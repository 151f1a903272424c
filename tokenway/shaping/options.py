"""A model's ``context:`` section in the YAML config: its window and what to do with a conversation too long for it.

```yaml
models:
  - name: chat
    context:
      window: 8192            # tokens; left out: learned from the workers (vLLM's max_model_len, the local n_ctx)
      strategy: trim          # reject (default) | trim | summarize
      output_reserve: 256     # room kept for the answer when the request sets no max_tokens
      tokenizer: /models/chat/tokenizer.json   # an HF tokenizers file; else tiktoken or the estimate
  - name: support
    context: {window: 4096, strategy: summarize, summarizer: small}
```

A model without ``context:`` is not shaped at all, and with no model shaped the policy is not in the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["reject", "trim", "summarize"]


class ContextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: Annotated[int, Field(ge=16)] | None = None
    strategy: Strategy = "reject"
    # Kept free for the answer when the request names neither max_tokens nor max_completion_tokens:
    # a prompt trimmed to the last token of the window would leave the model no room to reply.
    output_reserve: Annotated[int, Field(ge=0)] = 256
    tokenizer: Path | None = None  # a Hugging Face ``tokenizer.json`` for this model's prompts
    # trim and summarize aim this share below the window when the count is the 4-characters estimate, which
    # counted up to 20% too few tokens on logs and JSON (benchmarks/context_shaping/RESULTS.md)
    estimate_margin: Annotated[float, Field(ge=0, lt=1)] = 0.2
    summarizer: str | None = None  # the model (by public name) that writes summaries for ``summarize``
    summary_max_tokens: Annotated[int, Field(ge=16, le=8192)] = 400
    summary_cache_entries: Annotated[int, Field(ge=1)] = 1024  # summaries kept, least recently used dropped

    @model_validator(mode="after")
    def _summarizer_for_summaries(self) -> ContextConfig:
        if self.strategy == "summarize" and self.summarizer is None:
            raise ValueError("strategy 'summarize' needs 'summarizer': the model that writes the summaries")
        if self.tokenizer is not None and not self.tokenizer.is_file():
            raise ValueError(f"tokenizer {str(self.tokenizer)!r} is not a file (a Hugging Face tokenizer.json)")
        return self
