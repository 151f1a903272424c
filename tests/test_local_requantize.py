"""The llama engine serves the bundled model from a Q4_0 copy: made once, reused, never required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenway.config import DeploymentConfig
from tokenway.providers.base import ProviderResources
from tokenway.providers.local.model_files import bundled_model_path
from tokenway.providers.local.provider import LocalProvider

llama = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.asyncio


def make_provider(**options: Any) -> LocalProvider:
    deployment = DeploymentConfig.model_validate({
        "provider": "local", "model": "local", "slots": 1, "context_window": 256, "warmup": False, **options,
    })
    return LocalProvider(deployment, deployment.options, resources=None)  # type: ignore[arg-type]


async def started_path(**options: Any) -> Path:
    provider = make_provider(**options)
    await provider.start()
    try:
        path: Path = provider.engine.model_path  # type: ignore[attr-defined]
        return path
    finally:
        await provider.aclose()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def count_quantize_calls(monkeypatch: pytest.MonkeyPatch, result: int | None = None) -> list[bytes]:
    calls: list[bytes] = []
    real = llama.llama_model_quantize

    def quantize(source: bytes, target: bytes, params: Any) -> int:
        calls.append(target)
        return real(source, target, params) if result is None else result

    monkeypatch.setattr(llama, "llama_model_quantize", quantize)
    return calls


async def test_the_copy_is_made_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_quantize_calls(monkeypatch)
    first = await started_path(requantize_dir=str(tmp_path))
    assert first.parent == tmp_path and ".q4_0-" in first.name and first.stat().st_size > 50_000_000
    written = first.stat().st_mtime_ns
    second = await started_path(requantize_dir=str(tmp_path))
    assert second == first and second.stat().st_mtime_ns == written
    assert len(calls) == 1
    assert names(tmp_path) == [first.name]  # no partial file left behind


async def test_a_stale_copy_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / f"{bundled_model_path().stem}.q4_0-0000000000000000.gguf"
    stale.write_bytes(b"an older source's copy")
    path = await started_path(requantize_dir=str(tmp_path))
    assert path != stale and not stale.exists()


async def test_a_failed_conversion_serves_the_file_as_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    count_quantize_calls(monkeypatch, result=1)
    provider = make_provider(requantize_dir=str(tmp_path))
    await provider.start()
    try:
        assert provider.engine.model_path == bundled_model_path()  # type: ignore[attr-defined]
        assert "as shipped" in caplog.text and "requantize: off" in caplog.text
        assert names(tmp_path) == []
        engine = provider.engine
        prompt = engine.chat_prompt([{"role": "user", "content": "Hi"}])
        assert prompt  # loaded and usable
    finally:
        await provider.aclose()


async def test_an_unwritable_directory_serves_the_file_as_shipped(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert await started_path(requantize_dir=str(blocker / "models")) == bundled_model_path()


async def test_requantize_off_and_configured_files_are_served_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_quantize_calls(monkeypatch)
    assert await started_path(requantize="off", requantize_dir=str(tmp_path)) == bundled_model_path()
    configured = str(bundled_model_path())
    assert await started_path(model_path=configured, requantize_dir=str(tmp_path)) == bundled_model_path()
    assert calls == [] and names(tmp_path) == []


async def test_the_gateway_keeps_the_copy_in_its_data_dir(tmp_path: Path) -> None:
    deployment = DeploymentConfig.model_validate({
        "provider": "local", "model": "local", "slots": 1, "context_window": 256, "warmup": False,
    })
    resources = ProviderResources(http=None, upstream=None, data_dir=tmp_path / "data")  # type: ignore[arg-type]
    provider = LocalProvider(deployment, deployment.options, resources)
    await provider.start()
    try:
        path: Path = provider.engine.model_path  # type: ignore[attr-defined]
    finally:
        await provider.aclose()
    assert path.parent == tmp_path / "data" / "models"


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


async def test_a_copy_abandoned_by_a_dead_process_is_removed(tmp_path: Path) -> None:
    abandoned = tmp_path / f".SmolLM2.q4_0-0123.gguf.{dead_pid()}.partial"
    alive = tmp_path / f".SmolLM2.q4_0-0123.gguf.{os.getpid()}.partial"  # a conversion still running
    abandoned.write_bytes(b"x" * 1000)
    alive.write_bytes(b"x" * 1000)
    await started_path(requantize_dir=str(tmp_path))
    assert not abandoned.exists() and alive.exists()
