"""Virtual keys end to end on the embedded stores (SQLite key table, in-memory counters)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.access_support import MASTER, MESSAGES, chat, config, create_key, gateway
from tests.fakes import FakeUpstream

ADMIN = {"Authorization": f"Bearer {MASTER}"}


def test_key_lifecycle_create_use_list_revoke(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = create_key(base, name="ci", owner="ana", team="web", labels={"env": "dev"})
        secret = created["key"]
        assert secret.startswith("tw-") and "hash" not in created
        client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content

        listed = httpx.get(base + "/admin/keys", headers=ADMIN).json()["data"]
        assert [k["id"] for k in listed] == [created["id"]]
        assert secret not in httpx.get(base + "/admin/keys", headers=ADMIN).text
        assert listed[0]["hint"] == secret[-4:] and listed[0]["owner"] == "ana"

        r = httpx.delete(f"{base}/admin/keys/{created['id']}", headers=ADMIN)
        assert r.status_code == 200 and r.json()["revoked"] is True
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            client.chat.completions.create(model="m", messages=MESSAGES)
    db = (tmp_path / "tokenway.db").read_bytes()
    assert secret.encode() not in db  # stored hashed only


def test_wrong_key_never_reaches_the_backend(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        create_key(base)
        r = chat(base, "tw-not-a-real-key")
        missing = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert missing.status_code == 401
    assert upstream.seen == []


def test_api_key_header_and_master_key_both_work(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        secret = create_key(base)["key"]
        by_header = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                               headers={"api-key": secret})
        by_master = chat(base, MASTER)
    assert by_header.status_code == 200 and by_master.status_code == 200


def test_allowed_models_and_expiry(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        only_m = create_key(base, models=["m"])["key"]
        assert chat(base, only_m).status_code == 200
        denied = chat(base, only_m, model="other")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
        short = create_key(base, expires_in_s=0.5)["key"]
        assert chat(base, short).status_code == 200
        time.sleep(0.6)
        expired = chat(base, short)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    assert len(upstream.seen) == 2


def test_admin_api_needs_the_master_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        secret = create_key(base)["key"]
        as_key = httpx.get(base + "/admin/keys", headers={"Authorization": f"Bearer {secret}"})
        anonymous = httpx.post(base + "/admin/keys", json={})
    assert as_key.status_code == 403 and anonymous.status_code == 401  # wrong key: 403; no key: 401
    assert as_key.json()["error"]["type"] == "permission_error"


def test_update_changes_limits_and_a_key_written_elsewhere_is_seen(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        created = create_key(base)
        assert chat(base, created["key"]).status_code == 200  # in use: its secret is remembered
        r = httpx.patch(f"{base}/admin/keys/{created['id']}", json={"models": ["other"]}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["models"] == ["other"]
        assert chat(base, created["key"]).status_code == 403
        # A key written straight into the database (as the CLI does) is picked up by the poller.
        import asyncio

        from tokenway.keys import key_record, new_key
        from tokenway.stores.sqlite import SqliteDatabase

        secret, key_id = new_key()

        async def write() -> None:
            db = SqliteDatabase(tmp_path / "tokenway.db")
            await db.start()
            await db.put_key(key_record(secret, key_id, name="from-cli"))
            await db.aclose()

        asyncio.run(write())
        deadline = time.time() + 2
        while chat(base, secret).status_code != 200:
            assert time.time() < deadline, "a key written by another process was not seen within 2 s"
            time.sleep(0.05)


def test_open_gateway_serves_unknown_keys_but_refuses_revoked_ones(upstream: FakeUpstream, tmp_path: Path) -> None:
    with gateway(config(upstream), tmp_path, master_key=None) as (base, _):
        assert chat(base, "anything").status_code == 200
        created = create_key(base)
        httpx.delete(f"{base}/admin/keys/{created['id']}")
        assert chat(base, created["key"]).status_code == 401


def test_the_secret_never_appears_in_the_logs(upstream: FakeUpstream, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    with gateway(config(upstream), tmp_path) as (base, _):
        secret = create_key(base, name="logged")["key"]
        chat(base, secret)
        chat(base, secret + "x")
    out, err = capfd.readouterr()
    assert '"key":"logged"' in out  # the alias is logged ...
    assert secret not in out + err  # ... never the secret


def test_the_key_is_checked_before_the_body(upstream: FakeUpstream, tmp_path: Path) -> None:
    # OpenAI answers a call without a valid key 401 whatever its body says; the body is read, not parsed.
    bad_body = {"model": "m", "prompt": "x", "best_of": 0}
    with gateway(config(upstream), tmp_path) as (base, _):
        for headers in ({}, {"Authorization": "Bearer tw-wrong"}):
            for path in ("/v1/completions", "/v1/chat/completions", "/chat"):
                r = httpx.post(base + path, json=bad_body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
            assert httpx.post(base + "/v1/chat/completions", content=b"{not json", headers=headers).status_code == 401
        key = create_key(base)["key"]
        r = httpx.post(base + "/v1/completions", json=bad_body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    assert upstream.seen == []


def test_the_key_in_anthropics_header(upstream: FakeUpstream, tmp_path: Path) -> None:
    # Anthropic's SDK sends its key as x-api-key; Azure's as api-key; OpenAI's as a bearer token.
    with gateway(config(upstream), tmp_path) as (base, _):
        key = create_key(base)["key"]
        body = {"model": "m", "messages": MESSAGES}
        for header in ("x-api-key", "api-key"):
            assert httpx.post(base + "/v1/chat/completions", json=body, headers={header: key}).status_code == 200
            assert httpx.get(base + "/v1/models", headers={header: key}).status_code == 200
        assert httpx.post(base + "/v1/chat/completions", json=body, headers={"x-api-key": "tw-no"}).status_code == 401
