"""The deployment wheel (``make wheel``: the access path compiled with mypyc, see setup.py) is built
from this checkout and the access tests run against it, in a pytest of their own whose Python
processes (the gateways the tests start too) import tokenway from the wheel, not from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACCESS_TESTS = [
    "tests/test_keys_auth.py",
    "tests/test_keys_cli.py",
    "tests/test_keys_postgres.py",
    "tests/test_limits_embedded.py",
    "tests/test_limits_leases.py",
    "tests/test_limits_redis.py",
    "tests/test_budget_hold.py",
    "tests/test_budget_race.py",
    "tests/test_usage_ledger.py",
    "tests/test_gateway_errors.py",
]


@pytest.mark.timeout(900)
def test_the_compiled_wheel_passes_the_access_tests(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: the build writes C files and objects beside it
    shutil.copytree(ROOT / "tokenway", source / "tokenway", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source, env={**os.environ, "TOKENWAY_COMPILE": "1"}, check=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("tokenway-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # Safe-path mode: no Python process started below puts its working directory (the checkout) first
    # on sys.path, so every one of them imports the wheel's tokenway.
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    show = "import tokenway.policies.limits as a, tokenway.stores.memory as b; print(a.__file__, b.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", show], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(path.startswith(str(site)) and path.endswith(".so") for path in where), where
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=append", *ACCESS_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=780,
    )
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-3000:]
    assert " passed" in tests.stdout.splitlines()[-1]
