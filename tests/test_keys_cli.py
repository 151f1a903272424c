"""``tokenway keys`` and ``tokenway usage`` on the embedded store, seen by a running gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.access_support import chat, config, gateway
from tests.fakes import FakeUpstream


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENWAY_DATA_DIR": str(tmp)}
    env.pop("TOKENWAY_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "tokenway", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=60)


def test_cli_keys_are_used_and_revoked_on_a_running_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = _cli(tmp_path, "keys", "create", "--name", "cli", "--models", "m,other", "--rpm", "60",
                       "--tpm", "100000", "--budget", "5.00/day", "--label", "env=dev")
        assert created.returncode == 0, created.stderr
        record = json.loads(created.stdout[: created.stdout.rindex("}") + 1])
        assert record["budget"] == {"amount": 5.0, "period": "day"} and record["labels"] == {"env": "dev"}
        deadline = time.time() + 2
        while chat(base, record["key"]).status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        listing = _cli(tmp_path, "keys", "list").stdout
        assert record["id"] in listing and record["key"] not in listing
        assert _cli(tmp_path, "keys", "revoke", record["id"]).returncode == 0
        deadline = time.time() + 2
        while chat(base, record["key"]).status_code != 401:
            assert time.time() < deadline
            time.sleep(0.05)
    usage = _cli(tmp_path, "usage", "--group-by", "model")
    assert usage.returncode == 0 and "\nm " in usage.stdout


def test_cli_explains_bad_input(tmp_path: Path) -> None:
    bad = _cli(tmp_path, "keys", "create", "--budget", "5/week")
    missing = _cli(tmp_path, "keys", "revoke", "key_nope")
    assert bad.returncode == 2 and "5.00/day" in bad.stdout
    assert missing.returncode == 1 and "tokenway keys list" in missing.stdout
