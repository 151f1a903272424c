"""Settings: built once from env vars with flags on top, refused with a message that names the fix, and
handed to worker processes whole; the YAML loader's words that YAML 1.1 would have made booleans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenway.cli import WORKER_SETTINGS_ENV, worker_app
from tokenway.config import ConfigError, SettingsError, load_settings, parse_config


def test_flags_override_env_vars_and_env_vars_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWAY_PORT", "9100")
    monkeypatch.setenv("TOKENWAY_HOST", "127.0.0.2")
    monkeypatch.setenv("TOKENWAY_LOG_LEVEL", "error")
    settings = load_settings(port=9200, log_level="debug")
    assert (settings.port, settings.log_level) == (9200, "debug")  # flags given
    assert settings.host == "127.0.0.2"  # no flag: the env var
    assert settings.workers == 1  # neither: the default


def test_several_workers_need_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENWAY_REDIS_URL", raising=False)
    with pytest.raises(SettingsError) as refused:
        load_settings(workers=2)
    assert "TOKENWAY_REDIS_URL" in str(refused.value) and "Value error" not in str(refused.value)
    monkeypatch.setenv("TOKENWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings(workers=2).workers == 2


def test_a_bad_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWAY_PORT", "eighty")
    with pytest.raises(SettingsError, match=r"^TOKENWAY_PORT: Input should be a valid integer"):
        load_settings()


def test_workers_get_the_parents_settings_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text("models:\n  - name: m\n    deployments:\n      - {provider: openai, api_base: 'http://x/v1'}\n")
    monkeypatch.setenv("TOKENWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    parent = load_settings(port=9300, workers=2, config=path, drain_delay_s=0.5)
    monkeypatch.setenv(WORKER_SETTINGS_ENV, parent.model_dump_json())
    monkeypatch.setenv("TOKENWAY_PORT", "9400")  # the flag the parent was given wins over this in the workers too
    app = worker_app()
    assert app.settings == parent
    assert [m.name for m in app.config.models] == ["m"]


def test_yaml_on_off_yes_no_stay_words() -> None:
    # YAML 1.1 reads these as booleans; the documented `requantize: off` must stay the word "off",
    # while boolean fields still understand it.
    config = parse_config(
        "models:\n"
        "  - name: m\n"
        "    deployments:\n"
        "      - {provider: local, requantize: off, warmup: no}\n"
        "    cache: {enabled: off}\n"
        "    retry: {on: [5xx]}\n"
    )
    (model,) = config.models
    assert model.deployments[0].options.requantize == "off"  # type: ignore[attr-defined]
    assert model.deployments[0].options.warmup is False  # type: ignore[attr-defined]
    assert model.cache.enabled is False
    assert model.retry.on == ["5xx"]


@pytest.mark.parametrize(("where", "value"), [
    ("weight", ".inf"), ("weight", "1e999"), ("weight", "!!float .inf"), ("timeouts", "{total: .inf}"),
])
def test_an_infinite_number_is_refused_at_its_line(where: str, value: str) -> None:
    # ".inf" is greater than 0, so the range checks let it through; an infinite weight broke weighted routing.
    text = f"models:\n  - name: m\n    deployments:\n      - provider: openai\n        {where}: {value}\n"
    with pytest.raises(ConfigError, match=r"^t\.yaml:5: models\[0\]\.deployments\[0\]\.(weight|timeouts\.total): "
                                          "not a finite number$"):
        parse_config(text, "t.yaml")
