"""The console's session over real sockets: logging in, the cookie's flags, the admin API taking the
cookie as it takes the master key, CSRF on state changes, the playground's door, logging out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.console_support import MASTER, console_config
from tests.fakes import FakeUpstream
from tests.servers import running_app
from tokenway.console.session import SESSION_S, Sessions

ASK = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    upstream = FakeUpstream().start()
    with running_app(console_config(upstream), master_key=MASTER,
                     data_dir=Path(tmp_path_factory.mktemp("console"))) as (url, _):
        yield url
    upstream.stop()


@contextmanager
def logged_in(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base) as client:
        assert client.post("/ui/session", json={"key": MASTER}).status_code == 200
        yield client


def test_pages_need_a_session_and_login_sets_strict_httponly_cookies(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        assert client.get("/ui").headers["location"] == "/ui/"
        page = client.get("/ui/")
        assert (page.status_code, page.headers["location"]) == (303, "/ui/login")
        assert "Master key" in client.get("/ui/login").text
        answer = client.post("/ui/session", json={"key": MASTER})
    cookies = {line.split("=", 1)[0]: line.lower() for line in answer.headers.get_list("set-cookie")}
    assert "httponly" in cookies["tokenway_session"] and "samesite=strict" in cookies["tokenway_session"]
    assert "httponly" not in cookies["tokenway_csrf"] and "samesite=strict" in cookies["tokenway_csrf"]
    assert f"max-age={SESSION_S}" in cookies["tokenway_session"]


def test_the_session_cookie_is_secure_when_a_trusted_proxy_ended_tls(tmp_path: Path) -> None:
    upstream = FakeUpstream().start()
    https = {"x-forwarded-proto": "https"}
    with running_app(console_config(upstream), master_key=MASTER, data_dir=tmp_path,
                     trusted_proxies="127.0.0.1/32") as (behind_proxy, _):
        cookie = httpx.post(behind_proxy + "/ui/session", json={"key": MASTER}, headers=https).headers["set-cookie"]
        plain = httpx.post(behind_proxy + "/ui/session", json={"key": MASTER}).headers["set-cookie"]
    upstream.stop()
    assert "secure" in cookie.lower() and "secure" not in plain.lower()


def test_a_forwarded_proto_from_anyone_else_is_not_believed(base: str) -> None:
    cookie = httpx.post(base + "/ui/session", json={"key": MASTER}, headers={"x-forwarded-proto": "https"})
    assert "secure" not in cookie.headers["set-cookie"].lower()


@pytest.mark.parametrize(("body", "status", "param"), [({"key": "wrong"}, 403, "key"), ({}, 400, "key")])
def test_a_wrong_or_missing_key_is_refused_in_the_api_envelope(base: str, body: dict[str, str], status: int,
                                                               param: str) -> None:
    answer = httpx.post(base + "/ui/session", json=body)
    assert answer.status_code == status and answer.json()["error"]["param"] == param
    assert "set-cookie" not in answer.headers


def test_the_admin_api_takes_the_session_and_wants_the_csrf_header_to_change_state(base: str) -> None:
    with logged_in(base) as client:
        assert client.get("/admin/keys").status_code == 200
        assert client.get("/admin/overview").json()["deployments"]["total"] == 2  # fake, stuck
        refused = client.post("/admin/keys", json={"name": "no-csrf"})
        assert refused.status_code == 403 and "x-tokenway-csrf" in refused.json()["error"]["message"]
        wrong = client.post("/admin/keys", json={"name": "bad-csrf"}, headers={"x-tokenway-csrf": "0" * 64})
        assert wrong.status_code == 403
        csrf = {"x-tokenway-csrf": client.cookies["tokenway_csrf"]}
        created = client.post("/admin/keys", json={"name": "with-csrf"}, headers=csrf)
        assert created.status_code == 200 and created.json()["key"].startswith("tw-")
        names = [k["name"] for k in client.get("/admin/keys").json()["data"]]
        assert "with-csrf" in names and "no-csrf" not in names and "bad-csrf" not in names


def test_a_forged_or_expired_session_is_a_401_and_the_bearer_key_still_works(base: str) -> None:
    real = Sessions(MASTER).issue()
    expired = Sessions(MASTER).issue(now=0).token
    forged = real.token[:-1] + ("0" if real.token[-1] != "0" else "1")
    other_master = Sessions("another-master-key").issue().token
    for token in (expired, forged, other_master, "garbage"):
        answer = httpx.get(base + "/admin/keys", cookies={"tokenway_session": token})
        assert answer.status_code == 401, token
        assert "log in again at /ui/login" in answer.json()["error"]["message"]
    assert httpx.get(base + "/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).status_code == 200
    assert httpx.get(base + "/admin/keys", cookies={"tokenway_session": real.token}).status_code == 200


def test_the_playground_runs_the_chat_endpoint_for_a_session_only(base: str) -> None:
    refused = httpx.post(base + "/ui/playground/chat/completions", json=ASK)
    assert refused.status_code == 401 and "/ui/login" in refused.json()["error"]["message"]
    with logged_in(base) as client:
        no_csrf = client.post("/ui/playground/chat/completions", json=ASK)
        assert no_csrf.status_code == 403
        answer = client.post("/ui/playground/chat/completions", json=ASK,
                             headers={"x-tokenway-csrf": client.cookies["tokenway_csrf"]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream."
        assert answer.headers["x-tokenway-deployment"] == "fake#0"
        # the answer went through the policy list as the master key: counted, priced, in the ledger
        overview = client.get("/admin/overview").json()
        assert overview["models"]["fake"]["requests"] >= 1 and overview["spend_today"]["by_model"]["fake"] > 0


def test_logging_out_clears_both_cookies(base: str) -> None:
    with logged_in(base) as client:
        answer = client.delete("/ui/session")
        assert answer.status_code == 204
        cleared = [line.lower() for line in answer.headers.get_list("set-cookie")]
        assert len(cleared) == 2 and all("max-age=0" in line for line in cleared)
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_assets_are_served_from_the_package_under_their_version_and_unknown_ones_are_404(base: str) -> None:
    login = httpx.get(base + "/ui/login").text
    found = re.search(r'src="(/ui/static/([0-9a-f]{12})/login\.js)"', login)
    assert found, login
    script = httpx.get(base + found[1])
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "immutable" in script.headers["cache-control"]
    stale = httpx.get(base + "/ui/static/000000000000/login.js")  # a page of an older version
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    missing = httpx.get(base + f"/ui/static/{found[2]}/nope.js")
    assert missing.status_code == 404 and "nope.js" in missing.json()["error"]["message"]


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_the_palette_keeps_wcag_aa_contrast_for_text() -> None:
    css = (Path(__file__).resolve().parent.parent / "tokenway/console/static/console.css").read_text()
    colours = dict(re.findall(r"--([a-z0-9-]+): (#[0-9a-f]{6})", css))
    pairs = [("text", "bg"), ("muted", "bg"), ("muted", "card"), ("accent", "card"), ("accent-text", "accent"),
             ("bad", "card"), ("good", "card"), ("warn", "card")]
    for text, background in pairs:
        lighter, darker = sorted((_luminance(colours[text]), _luminance(colours[background])), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 4.5, (text, background)
