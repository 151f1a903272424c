"""Who may list the models and read /metrics, over a socket with the official SDK.

Before this, ``GET /v1/models`` answered anyone even with a master key set, and listed models a
key could not use; ``/metrics`` (key aliases, teams) had no way to be closed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.access_support import MASTER, config, create_key, gateway
from tests.fakes import FakeUpstream


def test_listing_models_needs_a_key_and_shows_only_the_allowed_ones(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        for path in ("/v1/models", "/v1/models/m"):
            r = httpx.get(base + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
            assert httpx.get(base + path, headers={"Authorization": "Bearer tw-wrong"}).status_code == 401

        master = openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0)
        assert [m.id for m in master.models.list()] == ["m", "other"]
        assert master.models.retrieve("other").id == "other"

        only_m = create_key(base, models=["m"])["key"]
        client = openai.OpenAI(base_url=base + "/v1", api_key=only_m, max_retries=0)
        assert [m.id for m in client.models.list()] == ["m"]
        assert client.models.retrieve("m").id == "m"
        with pytest.raises(openai.NotFoundError) as hidden:
            client.models.retrieve("other")  # on the gateway, but not for this key: the same 404 as unknown
        with pytest.raises(openai.NotFoundError) as unknown:
            client.models.retrieve("nope")
        assert hidden.value.code == unknown.value.code == "model_not_found"
        assert hidden.value.message.replace("other", "nope") == unknown.value.message  # nothing tells them apart

        every = create_key(base)["key"]  # an empty allow-list allows every model
        assert [m.id for m in openai.OpenAI(base_url=base + "/v1", api_key=every).models.list()] == ["m", "other"]


def test_an_open_gateway_lists_every_model_without_a_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path, master_key=None) as (base, _):
        assert [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]] == ["m", "other"]


def test_metrics_behind_a_token(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path, metrics_token="metrics-secret") as (base, _):
        refused = httpx.get(base + "/metrics")
        assert refused.status_code == 401 and "TOKENWAY_METRICS_TOKEN" in refused.json()["error"]["message"]
        virtual = create_key(base)["key"]  # a caller's own key is not enough
        assert httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {virtual}"}).status_code == 403
        for token in ("metrics-secret", MASTER):
            scraped = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
            assert scraped.status_code == 200 and "tokenway_requests_total" in scraped.text
        assert httpx.get(base + "/health").status_code == 200  # probes stay open


def test_metrics_open_without_a_token(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        assert httpx.get(base + "/metrics").status_code == 200
