"""A gateway for the console's tests: a scripted fake model with a price, optionally the embedded one."""

from __future__ import annotations

import secrets

from tests.fakes import FakeUpstream

MASTER = "sk-console-master"
LOCAL = """  - name: local
    deployments:
      - provider: local
"""


def console_config(upstream: FakeUpstream, local: bool = False) -> str:
    """``fake`` answers at once, at a price; ``stuck`` never answers (a job to cancel); ``local``: the
    embedded model."""
    return f"""
models:
  - name: fake
    deployments:
      - provider: openai
        api_base: {upstream.url("ok")}
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  - name: stuck
    deployments:
      - provider: openai
        api_base: {upstream.url("hang")}
{LOCAL if local else ""}access:
  keys_refresh_s: 0.2
  ledger_flush_s: 0.2
  redis_prefix: "tw-console-{secrets.token_hex(4)}:"
"""
