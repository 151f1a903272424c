"""Workers found through the Kubernetes EndpointSlice API: a gateway with in-cluster credentials (a
service-account folder and KUBERNETES_SERVICE_HOST/PORT) against a fake API server over TLS on a real
socket. Ready endpoints join at once from the watch, not-ready ones leave, an expired watch lists
again, and a refused token leaves the model with no workers until the API answers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.discovery_fakes import FakeKubernetes, Worker, endpoint_slice
from tests.servers import free_port, running_app
from tests.test_discovery_dns import MESSAGES, wait_for, workers_of
from tokenway.routing import kubernetes_source
from tokenway.routing.kubernetes_source import InCluster, KubernetesError

TOKEN = "service-account-token"


@pytest.fixture
def in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """A fake API server, and this process set up as a pod that may reach it."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    cert, key = account / "ca.crt", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=kube-apiserver", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=digitalSignature,keyCertSign",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    (account / "token").write_text(TOKEN + "\n")
    (account / "namespace").write_text("llm")
    server = FakeKubernetes((str(cert), str(key)), TOKEN, "llm").start()
    monkeypatch.setattr(kubernetes_source, "SERVICE_ACCOUNT", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    yield server
    server.stop()


CONFIG = """
models:
  - name: m
    deployments:
      - provider: openai
        model: served-model
        discovery: {kubernetes: {service: vllm}, port: http, interval_s: 10}
"""


def test_endpoints_join_and_leave_from_the_watch(in_cluster: FakeKubernetes) -> None:
    port = free_port()
    a = Worker("127.0.0.2", port).start()
    b = Worker("127.0.0.3", port).start()
    in_cluster.apply("ADDED", endpoint_slice("vllm-x1", port, {"127.0.0.2": True}))
    try:
        with running_app(CONFIG) as (base, app):
            wait_for(lambda: workers_of(app) == [f"m#0@127.0.0.2:{port}"])
            wait_for(lambda: in_cluster.watching == 1)
            assert in_cluster.lists == 1

            in_cluster.apply("MODIFIED", endpoint_slice("vllm-x1", port, {"127.0.0.2": True, "127.0.0.3": True}))
            joined = wait_for(lambda: len(workers_of(app)) == 2)
            # a pod being deleted turns not-ready first: it leaves routing while its calls finish
            in_cluster.apply("MODIFIED", endpoint_slice("vllm-x1", port, {"127.0.0.2": False, "127.0.0.3": True}))
            wait_for(lambda: workers_of(app) == [f"m#0@127.0.0.3:{port}"])
            answered = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})

            in_cluster.expire()  # our version is too old now: list again, then watch from the new one
            wait_for(lambda: in_cluster.lists == 2 and in_cluster.watching == 1)
            assert workers_of(app) == [f"m#0@127.0.0.3:{port}"]

            in_cluster.apply("DELETED", endpoint_slice("vllm-x1", port, {}))
            wait_for(lambda: workers_of(app) == [])
            status = httpx.get(base + "/admin/deployments").json()["discovery"]["m"][0]
    finally:
        a.stop()
        b.stop()
    assert joined < 5  # from the watch event, well before the next interval (10 s)
    assert answered.status_code == 200 and b.started == 1 and a.started == 0
    assert status["source"] == "kubernetes:vllm" and status["workers"] == []


def test_a_refused_token_finds_no_workers_and_says_why(
    in_cluster: FakeKubernetes, capfd: pytest.CaptureFixture[str]
) -> None:
    in_cluster._token = "another-token"  # the API server does not accept ours (RBAC, a revoked account)
    with running_app(CONFIG) as (base, app):
        wait_for(lambda: in_cluster.refused >= 1)
        refused = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert workers_of(app) == []
    assert refused.status_code == 503
    out = capfd.readouterr().out
    assert '"event":"discovery_kubernetes_failed"' in out and "HTTP 401" in out


def test_a_watch_that_ends_at_once_is_retried_with_backoff_not_in_a_loop(in_cluster: FakeKubernetes) -> None:
    port = free_port()
    in_cluster.apply("ADDED", endpoint_slice("vllm-x1", port, {"127.0.0.2": True}))
    in_cluster.end_watches_at_once = True
    worker = Worker("127.0.0.2", port).start()
    try:
        with running_app(CONFIG) as (_, app):
            wait_for(lambda: workers_of(app) == [f"m#0@127.0.0.2:{port}"])  # from the list
            time.sleep(2.5)
            watches = in_cluster.watches
            kept = workers_of(app)
    finally:
        worker.stop()
    assert 1 <= watches <= 4  # backoff 1 s, 2 s, ...: not thousands
    assert kept == [f"m#0@127.0.0.2:{port}"]


def test_outside_a_pod_the_error_says_what_to_use_instead(tmp_path: Path) -> None:
    with pytest.raises(KubernetesError, match=r"works inside a pod.*dns"):
        InCluster.from_environment(tmp_path, {})
