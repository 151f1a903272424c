"""``tokenway cost``: the sizing against published figures, the arithmetic, the CLI end to end (table,
JSON, HTML, bad input), a real bench file of the embedded model, and traffic read from the ledger."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.access_support import drop_schema, pg_schema, pg_url
from tests.servers import running_app
from tests.test_plots import _assert_inside
from tokenway.bench.metrics import percentile
from tokenway.config import ConfigError
from tokenway.cost import bench_file
from tokenway.cost.catalogue import CatalogueError, Checked, load_gpus, load_models, pick
from tokenway.cost.pricing import SelfHosted, api_per_request, break_even, self_hosted_option
from tokenway.cost.sizing import GIB, SizingError, replicas_for, roofline, size_memory
from tokenway.cost.traffic import DAY_S, Tokens, Traffic, from_usage
from tokenway.observability.logging import JsonLog
from tokenway.prices import PRICES, SOURCES
from tokenway.stores.base import Database, UsageRecord, UsageTraffic
from tokenway.stores.postgres import PostgresDatabase
from tokenway.stores.sqlite import SqliteDatabase
from tokenway.usage.ledger import Ledger

GB = 1e9
MODELS = load_models()
GPUS = load_gpus().gpus


# Published figures (docs/cost.md cites them): Hugging Face's Llama 3.1 post gives the weights'
# memory (8B: 16 GB in FP16, 70B: 140 GB in FP16 and 35 GB in INT4) and the KV cache of 128k
# tokens in FP16 (8B: 15.62 GB, 70B: 39.06 GB: GiB of 128,000 tokens); the model repositories' BF16
# safetensors come to 15.2 GB (Qwen2.5-7B-Instruct) and 14.5 GB (Mistral-7B-Instruct-v0.3).
@pytest.mark.parametrize(
    ("model", "dtype", "published_gb"),
    [("Llama-3.1-8B", "bf16", 16), ("Llama-3.1-70B", "bf16", 140), ("Llama-3.1-70B", "int4", 35),
     ("Qwen2.5-7B", "bf16", 15.2), ("Mistral-7B-v0.3", "bf16", 14.5)],
)
def test_weights_match_published_sizes(model: str, dtype: str, published_gb: float) -> None:
    assert MODELS[model].weight_bytes(dtype) / GB == pytest.approx(published_gb, rel=0.03)


@pytest.mark.parametrize(("model", "published_gib"), [("Llama-3.1-8B", 15.62), ("Llama-3.1-70B", 39.06)])
def test_kv_cache_of_128k_tokens_matches_published(model: str, published_gib: float) -> None:
    assert 128_000 * MODELS[model].kv_bytes_per_token("fp16") / GIB == pytest.approx(published_gib, abs=0.01)


def test_kv_per_token_is_two_x_layers_x_kv_heads_x_head_dim_x_bytes() -> None:
    assert MODELS["Llama-3.1-8B"].kv_bytes_per_token("fp16") == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert MODELS["Qwen2.5-7B"].kv_bytes_per_token("fp16") == 2 * 28 * 4 * 128 * 2
    assert MODELS["Llama-3.1-70B"].kv_bytes_per_token("fp8") == 2 * 80 * 8 * 128


def test_tensor_parallel_grows_until_weights_and_kv_fit() -> None:
    llama70, h100 = MODELS["Llama-3.1-70B"], GPUS["H100-80"]
    # 131.5 GiB of BF16 weights: two H100s (143 GiB usable) hold them and a little KV cache, ...
    small = size_memory(llama70, "bf16", "fp16", h100, "H100-80", concurrency=8, context_tokens=2048)
    assert small.gpus == 2 and small.kv_gib == pytest.approx(8 * 2048 * 327680 / GIB)
    # ... 64 sequences of 4k tokens (80 GiB of KV cache) need four, and INT4 weights fit on one.
    assert size_memory(llama70, "bf16", "fp16", h100, "H100-80", 64, 4096).gpus == 4
    assert size_memory(llama70, "int4", "fp8", h100, "H100-80", 8, 2048).gpus == 1
    with pytest.raises(SizingError, match=r"do not fit in 8 x L4.*--dtype"):
        size_memory(llama70, "bf16", "fp16", GPUS["L4"], "L4", 64, 4096)


def _traffic(requests_per_day: float, prompt: float, completion: float, peak_factor: float = 2.0) -> Traffic:
    return Traffic(requests_per_day, requests_per_day / DAY_S * peak_factor, Tokens.fixed(prompt),
                   Tokens.fixed(completion), "test")


def test_roofline_is_bandwidth_bound_decode_plus_compute_bound_prefill() -> None:
    model, gpu = MODELS["Llama-3.1-8B"], GPUS["H100-80"]
    memory = size_memory(model, "bf16", "fp16", gpu, "H100-80", 16, 1200)
    est = roofline(model, memory, "bf16", gpu, _traffic(1000, 1000, 200))
    step_s = (8.03e9 * 2 + 16 * 1100 * 131072) / (3350e9 * 0.7)  # weights + KV of 16 sequences, each step
    prefill_s = 2 * 8.03e9 * 1000 / (989e12 * 0.5)
    assert est.requests_per_s == pytest.approx(1 / (200 * step_s / 16 + prefill_s))
    assert est.output_tokens_per_s == pytest.approx(est.requests_per_s * 200)
    assert est.prefill_share == pytest.approx(prefill_s / (200 * step_s / 16 + prefill_s))
    assert not est.measured and any("70%" in a for a in est.assumptions)


def test_replicas_carry_the_peak_at_the_utilisation_target() -> None:
    assert replicas_for(peak_rps=10, replica_rps=5, utilisation=1.0) == 2
    assert replicas_for(peak_rps=10, replica_rps=5, utilisation=0.7) == 3
    assert replicas_for(peak_rps=0.01, replica_rps=5, utilisation=0.7) == 1
    setup = SelfHosted("self-hosted on-demand", 2, 4.0, replica_rps=5, utilisation=0.5, prefill_share=0.25)
    traffic = _traffic(1_000_000, 500, 100, peak_factor=2.0)  # peak 23.1/s: 10 replicas of 2.5/s
    option = self_hosted_option(setup, traffic)
    monthly = 10 * 2 * 4.0 * 24 * 365.25 / 12
    assert option.replicas == 10 and option.per_month == pytest.approx(monthly)
    requests = 1_000_000 * 365.25 / 12
    assert option.per_1k_requests == pytest.approx(monthly / requests * 1000)
    assert option.per_1m_input == pytest.approx(monthly * 0.25 / (requests * 500) * 1e6)
    assert option.per_1m_output == pytest.approx(monthly * 0.75 / (requests * 100) * 1e6)


@pytest.mark.parametrize(("day_cost", "per_day", "api"), [(100, 1000, 0.2), (100, 1000, 0.15), (96, 5000, 0.0213),
                                                          (100, 1000, 0.1), (100, 1000, 0.05)])
def test_break_even_is_where_self_hosting_stays_cheaper(day_cost: float, per_day: float, api: float) -> None:
    def cheaper(volume: float) -> bool:
        return math.ceil(volume / per_day) * day_cost <= api * volume + 1e-9

    found = break_even(day_cost, per_day, api)
    volumes = [v / 4 for v in range(1, 4 * 50 * int(per_day))]
    if found is None:  # one full replica costs no less a request than the API
        assert day_cost / per_day >= api and not any(cheaper(v) for v in volumes[-int(per_day):])
    else:
        assert all(cheaper(v) for v in volumes if v >= found) and not cheaper(found - 1)


def test_api_cost_of_a_request_is_its_tokens_at_list_price() -> None:
    assert api_per_request("gpt-4o-mini", _traffic(1, 1000, 500)) == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)


def test_token_sizes_from_counts_match_the_percentiles_of_every_request() -> None:
    rng = random.Random(5)
    sizes = [rng.choice([12, 40, 41, 300, 2048]) + rng.randrange(3) for _ in range(997)]
    tokens = Tokens.of_counts(list(Counter(sizes).items()))
    ordered = sorted(float(v) for v in sizes)
    assert tokens.p50 == pytest.approx(percentile(ordered, 50)) and tokens.p95 == pytest.approx(percentile(ordered, 95))
    assert tokens.mean == pytest.approx(sum(sizes) / len(sizes)) and tokens.max == max(sizes)
    assert Tokens.of([7]) == Tokens.fixed(7)


def test_traffic_from_the_ledgers_counts() -> None:
    usage = UsageTraffic(requests=1500, first_ts=1000.0, busiest_minute=61, prompt_tokens=[(100, 1440), (400, 60)],
                         completion_tokens=[(20, 1500)])
    traffic = from_usage(usage, since=0.0, until=1000.0 + DAY_S / 2, source="test")
    assert traffic.requests_per_day == pytest.approx(3000)  # 1,500 in the half day since the first
    assert traffic.peak_rps == pytest.approx(61 / 60) and traffic.peak_factor == pytest.approx(61 / 60 / (3000 / DAY_S))
    assert traffic.prompt.max == 400 and traffic.prompt.p50 == 100 and traffic.completion.mean == 20
    young = from_usage(UsageTraffic(10, 1000.0, 5, [(1, 10)], [(1, 10)]), 0.0, 1060.0, "test")
    assert young.requests_per_day == pytest.approx(10 * 24)  # read as at least an hour
    with pytest.raises(ValueError, match="no answered requests"):
        from_usage(UsageTraffic(0, None, 0, [], []), 0.0, 1.0, "test")


def test_catalogue_override_lookup_and_errors(tmp_path: Path) -> None:
    mine = tmp_path / "gpus.yaml"
    mine.write_text("prices_as_of: '2026-12-01'\ngpus:\n  L4:\n    memory_gib: 22.5\n    bandwidth_gbs: 300\n"
                    "    fp16_tflops: 121\n    prices: {onprem: {on_demand: 0.25}}\n"
                    "  MI300X:\n    memory_gib: 192\n    bandwidth_gbs: 5300\n    fp16_tflops: 1307\n"
                    "    prices: {azure: {on_demand: 6.0}}\n")
    catalogue = load_gpus(mine)
    assert catalogue.prices_as_of == "2026-12-01" and list(catalogue.gpus["L4"].prices) == ["onprem"]
    assert "MI300X" in catalogue.gpus and "H100-80" in catalogue.gpus
    assert pick("GPU", "h100-80", dict(catalogue.gpus)) == "H100-80"
    with pytest.raises(CatalogueError, match=r"Unknown GPU 'H100'\. Known: A100-40, A100-80, .*H100-80"):
        pick("GPU", "H100", dict(catalogue.gpus))
    mine.write_text("prices_as_of: x\ngpus:\n  L4:\n    memory_gib: -1\n    bandwidth_gbs: 300\n    fp16_tflops: 1\n")
    with pytest.raises(ConfigError, match=r"gpus\.yaml:4: gpus\.L4\.memory_gib: Input should be greater than 0"):
        load_gpus(mine)


def _shipped_yaml(name: str) -> dict[str, dict[str, dict[str, object]]]:
    return yaml.safe_load((Path(__file__).parents[1] / "tokenway" / "cost" / "data" / name).read_text())


def _says_where_it_stands(entry: dict[str, object]) -> bool:
    """A source the figures were checked against, or an explicit ``verified: false``; never silence."""
    return entry.get("verified") is False or (entry.get("verified") is True and bool(entry.get("source")))


def test_every_shipped_figure_has_a_source_or_is_marked_unverified() -> None:
    gpus, models = _shipped_yaml("gpus.yaml")["gpus"], _shipped_yaml("models.yaml")["models"]
    for name, gpu in gpus.items():
        assert _says_where_it_stands(gpu), name
        assert gpu.get("prices"), name
        for cloud, price in gpu["prices"].items():  # type: ignore[union-attr]
            assert _says_where_it_stands(price), f"{name} {cloud}"
    assert all(_says_where_it_stands(model) for model in models.values())
    checked: list[Checked] = [*GPUS.values(), *(p for g in GPUS.values() for p in g.prices.values()), *MODELS.values()]
    for figures in checked:
        if figures.verified:
            assert figures.source is not None and figures.source.url.startswith("http") and figures.source.as_of
        else:
            assert figures.note, "an unverified figure says what was found instead"
    assert set(SOURCES) <= set(PRICES) and all(url.startswith("https://") and date for url, date in SOURCES.values())


def test_shipped_gpus_are_physical_and_spot_is_a_discount() -> None:
    for name, gpu in GPUS.items():
        assert gpu.memory_gib > 0 and gpu.bandwidth_gbs > 0 and gpu.fp16_tflops > 0, name
        for cloud, price in gpu.prices.items():
            assert price.spot is None or price.spot <= price.on_demand, f"{name} {cloud}"
    # the driver reports a little less than the marketing GB, never more
    assert GPUS["H100-80"].memory_gib <= 80 < GPUS["H200"].memory_gib <= 141


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    verified: true\n", r"gpus\.yaml:4: gpus\.L4: Value error, verified: true needs a source"),
        ("    prices: {aws: {on_demand: 1.0, spot: 2.0}}\n", r"gpus\.L4\.prices\.aws: Value error, spot \(2\.0\) is "
         r"dearer than on_demand"),
    ],
)
def test_a_gpu_file_that_overstates_its_figures_is_refused(tmp_path: Path, entry: str, message: str) -> None:
    mine = tmp_path / "gpus.yaml"
    mine.write_text("prices_as_of: x\ngpus:\n  L4:\n    memory_gib: 22\n    bandwidth_gbs: 300\n    fp16_tflops: 1\n"
                    + entry)
    with pytest.raises(ConfigError, match=message):
        load_gpus(mine)


def test_a_bench_file_of_the_wrong_shape_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"tool": "tokenway bench", "format_version": 1, "config": {},
                                "runs": [{"shape": {"concurrency": 1}, "summary": {"label": "c=1"}, "requests": []}]}))
    with pytest.raises(bench_file.BenchFileError, match=r"runs\[0\]\.summary\.request_throughput: Field required"):
        bench_file.load(path)
    run = {"shape": {"concurrency": 4}, "requests": [], "summary": {
        "label": "c=4", "request_throughput": 3.0, "output_throughput": 90.0, "concurrency": {"peak": 4, "mean": 3.9},
        "goodput": {"slo_ms": {"ttft": 10}, "req_s": 0.0}}}
    path.write_text(json.dumps({"tool": "tokenway bench", "format_version": 1, "config": {}, "runs": [run]}))
    with pytest.raises(bench_file.BenchFileError, match="no request of any run met its SLO"):
        bench_file.load(path)
    path.write_text('{"tool": "other"}')
    with pytest.raises(bench_file.BenchFileError, match=r"not a tokenway bench results file.*tool"):
        bench_file.load(path)


# The CLI end to end, in a subprocess as a user runs it.

def _cost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenway", "cost", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, check=False)


FLAGS = ["--requests-per-day", "200000", "--prompt-tokens", "900", "--completion-tokens", "300"]


def test_cli_table_json_and_html(tmp_path: Path) -> None:
    table = _cost(*FLAGS, "--model", "Llama-3.1-70B", "--dtype", "int4", "--gpu", "H100-80", "--cloud", "aws")
    assert table.returncode == 0, table.stderr
    assert "ESTIMATE (roofline)" in table.stdout and "self-hosted on-demand" in table.stdout
    assert "self-hosted spot" in table.stdout and "gpt-4o-mini" in table.stdout

    done = _cost(*FLAGS, "--model", "Llama-3.1-70B", "--dtype", "int4", "--gpu", "H100-80", "--cloud", "aws",
                 "--json", "--html", str(tmp_path / "cost.html"))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["sizing"]["weights_gib"] == pytest.approx(70.6e9 * 0.5 / GIB)
    assert doc["hardware"]["on_demand_per_gpu_hour"] == GPUS["H100-80"].prices["aws"].on_demand
    assert doc["throughput"]["source"] == "estimate"
    names = [o["name"] for o in doc["options"]]
    assert names[:2] == ["self-hosted on-demand", "self-hosted spot"] and "claude-3-5-haiku" in names
    assert "text-embedding-3-small" not in names
    gpt4o = next(o for o in doc["options"] if o["name"] == "gpt-4o")
    assert gpt4o["per_1k_requests"] == pytest.approx((900 * 2.5 + 300 * 10) / 1e6 * 1000)
    html = (tmp_path / "cost.html").read_text()
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(charts) == 2 and "Break-even" in html
    assert "self-hosted on-demand *" in html and "* unverified: no published page confirmed H100-80" in html
    assert all(_assert_inside(chart) > 10 for chart in charts)


def test_cli_marks_unverified_options_in_the_table_and_the_json(tmp_path: Path) -> None:
    args = [*FLAGS, "--model", "Llama-3.1-8B", "--gpu", "L4", "--cloud", "aws"]
    table = _cost(*args)
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.startswith("│")}
    assert "self-hosted on-demand *" in rows and "gpt-4o *" in rows  # nothing published confirmed these
    assert "claude-3-haiku" in rows and "deepseek-chat" in rows  # checked against the providers' pages
    footnote = " ".join(table.stdout[table.stdout.index("* unverified"):].split())
    assert "L4's memory, bandwidth and TFLOPS" in footnote and "aws's L4 prices (g6.xlarge)" in footnote

    doc = json.loads(_cost(*args, "--json").stdout)
    options = {o["name"]: o for o in doc["options"]}
    assert not options["self-hosted on-demand"]["verified"] and not options["gpt-4o"]["verified"]
    assert options["claude-3-haiku"]["verified"] and options["deepseek-chat"]["per_1m_output"] == 1.68
    assert doc["hardware"]["specs_check"] == {"verified": False, "source": None, "note": GPUS["L4"].note}
    assert doc["hardware"]["region"] == "us-east-1" and doc["model"]["verified"] is False
    assert any("L4's memory" in line for line in doc["unverified"])

    # a GPU file whose owner checked their own figures: the GPU and its price leave the footnote
    mine = tmp_path / "gpus.yaml"
    source = "source: {url: 'https://example.com/datasheet', as_of: '2026-12-01'}, verified: true"
    mine.write_text(f"prices_as_of: '2026-12-01'\ngpus:\n  L4: {{memory_gib: 22.5, bandwidth_gbs: 300,"
                    f" fp16_tflops: 121, {source}, prices: {{onprem: {{on_demand: 0.25, {source}}}}}}}\n")
    doc = json.loads(_cost(*args[:-2], "--cloud", "onprem", "--gpus", str(mine), "--json").stdout)
    assert doc["hardware"]["specs_check"]["source"] == {"url": "https://example.com/datasheet", "as_of": "2026-12-01"}
    assert not any("L4" in line for line in doc["unverified"])
    assert any("Llama-3.1-8B" in line for line in doc["unverified"])  # the model still is, so the option too
    assert not next(o for o in doc["options"] if o["kind"] == "self-hosted")["verified"]


def test_cli_picks_the_cheapest_gpu_that_fits_when_none_is_named() -> None:
    done = _cost(*FLAGS, "--model", "Llama-3.1-70B", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    chosen = doc["hardware"]["per_month_on_demand"]
    assert doc["alternatives"] and all(a["per_month_on_demand"] >= chosen for a in doc["alternatives"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "H100"], "Unknown GPU 'H100'. Known: A100-40, A100-80, A10G, H100-80, H200, L4, L40S."),
        (["--model", "llama-4"], "Unknown model 'llama-4'. Known: Llama-3.1-70B, Llama-3.1-8B, Mistral-7B-v0.3,"),
        (["--api", "gpt-9"], "Unknown API model 'gpt-9'. Known: "),
        (["--dtype", "int3"], "Unknown --dtype 'int3'. Known: fp32, bf16"),
        (["--gpu", "L4", "--model", "Llama-3.1-70B", "--concurrency", "256"], "do not fit in 8 x L4"),
        (["--layers", "32"], "A model given by numbers also needs --params-b, --kv-heads"),
        (["--utilisation", "1.5"], "--utilisation is a share"),
    ],
)
def test_cli_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    done = _cost(*FLAGS, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cli_takes_a_model_given_by_its_numbers() -> None:
    done = _cost(*FLAGS, "--model", "Qwen2.5-14B", "--params-b", "14.7", "--layers", "48", "--kv-heads", "8",
                 "--head-dim", "128", "--context-length", "32768", "--gpu", "L40S", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["model"]["name"] == "Qwen2.5-14B" and doc["model"]["dtype"] == "bf16"
    assert doc["sizing"]["kv_bytes_per_token"] == 2 * 48 * 8 * 128 * 2
    assert doc["sizing"]["weights_gib"] == pytest.approx(14.7e9 * 2 / GIB)


def test_cli_without_traffic_says_what_to_pass() -> None:
    done = _cost("--gpu", "L4")
    assert done.returncode == 2 and "pass --from-ledger or --requests-per-day" in done.stderr


def test_cli_bad_bench_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"tool": "tokenway bench", "format_version": 2, "config": {}, "runs": []}))
    done = _cost(*FLAGS, "--gpu", "L4", "--bench", str(bad))
    assert done.returncode == 2 and "format_version: Input should be 1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# A real run of the embedded model (the zero-config default) on this machine: a bench sweep, and the
# ledger the gateway wrote while serving it.
EMBEDDED = "models:\n  - name: local\n    deployments:\n      - provider: local\n"


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the bench's results.json and the gateway's data dir (its SQLite ledger)."""
    from tokenway.bench.cli import main as bench_main

    out = tmp_path_factory.mktemp("bench")
    with running_app(EMBEDDED, data_dir=out) as (base, _):
        rc = bench_main(["--base-url", base + "/v1", "--model", "local", "--concurrency", "1,2", "-n", "6",
                         "--input-len", "32", "--output-len", "8", "--goodput", "e2el:20000", "--json",
                         str(out / "results.json"), "--progress", "off"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def embedded_bench(embedded_run: Path) -> Path:
    return embedded_run / "results.json"


def test_cli_prices_a_real_bench_of_the_embedded_model(embedded_bench: Path, tmp_path: Path) -> None:
    results = bench_file.load(embedded_bench)
    assert [p.concurrency for p in results.points] == [1, 2] and results.slo_ms == {"e2el": 20000}
    done = _cost("--bench", str(embedded_bench), "--gpu", "L4", "--model", "SmolLM2-135M", "--requests-per-day",
                 "5000", "--json", "--html", str(tmp_path / "cost.html"))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    best = max(results.points, key=lambda p: p.capacity)
    assert doc["throughput"]["source"] == "measured" and doc["throughput"]["concurrency"] == best.concurrency
    assert doc["throughput"]["requests_per_s"] == pytest.approx(best.capacity)
    assert doc["traffic"]["completion_tokens"]["mean"] == pytest.approx(
        sum(results.completion_tokens) / len(results.completion_tokens))
    assert doc["sizing"]["weights_gib"] == pytest.approx(0.1345e9 * 20 / 32 / GIB)
    charts = re.findall(r"<svg.*?</svg>", (tmp_path / "cost.html").read_text(), flags=re.S)
    assert len(charts) == 3 and all(_assert_inside(chart) > 0 for chart in charts)
    volume = _cost("--bench", str(embedded_bench), "--gpu", "L4", "--model", "SmolLM2-135M")
    assert volume.returncode == 2 and "pass --from-ledger or --requests-per-day" in volume.stderr
    bigger = _cost("--bench", str(embedded_bench), "--gpu", "L4", "--model", "SmolLM2-135M", "--requests-per-day",
                   "5000", "--prompt-tokens", "4000", "--json")
    assert json.loads(bigger.stdout)["traffic"]["prompt_tokens"]["p95"] == 4000


async def _write_ledger(db: Database, wal: Path) -> None:
    """Two days of traffic through the ledger's own writer: one request a minute, a burst of 120 in
    48 seconds, and one refused request that does not count."""
    await db.start()
    ledger = Ledger(db, wal, JsonLog())
    await ledger.start()
    base = time.time() // 60 * 60 - 2 * DAY_S  # on a minute: the burst falls in one calendar minute
    for i in range(2880):
        ledger.record(UsageRecord(f"r{i}", f"q{i}", base + i * 60, "k", None, "m", "m#0", 600, 150, 0, 1, 5.0, 200))
    for i in range(120):
        ledger.record(UsageRecord(f"b{i}", f"p{i}", base + 600 + i * 0.4, "k", None, "m", "m#0", 2000, 400, 0, 1,
                                  5.0, 200))
    ledger.record(UsageRecord("e", "x", base + 7, "k", None, "m", "m#0", 99999, 9, 0, 0, 5.0, 429))
    await ledger.aclose()
    await db.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The settings `tokenway serve` would use for a ledger holding ``_write_ledger``'s rows."""
    if request.param == "sqlite":
        asyncio.run(_write_ledger(SqliteDatabase(tmp_path / "tokenway.db"), tmp_path / "wal"))
        yield {"TOKENWAY_DATA_DIR": str(tmp_path), "TOKENWAY_DATABASE_URL": ""}
        return
    schema = pg_schema()
    try:
        asyncio.run(_write_ledger(PostgresDatabase(pg_url(schema)), tmp_path / "wal"))
        yield {"TOKENWAY_DATA_DIR": str(tmp_path), "TOKENWAY_DATABASE_URL": pg_url(schema)}
    finally:
        drop_schema(schema)


def test_cli_reads_traffic_from_the_ledger(ledger_env: dict[str, str]) -> None:
    done = _cost("--from-ledger", "--days", "7", "--gpu", "A10G", "--json", env=ledger_env)
    assert done.returncode == 0, done.stderr
    traffic = json.loads(done.stdout)["traffic"]
    assert traffic["requests_per_day"] == pytest.approx(3000 / 2, rel=0.01)
    assert traffic["peak_rps"] == pytest.approx(121 / 60) and traffic["prompt_tokens"]["max"] == 2000
    table = _cost("--from-ledger", "--gpu", "A10G", "--api", "gpt-4o", env=ledger_env)
    assert table.returncode == 0 and "usage ledger, last 7 days: 3000 requests" in table.stdout


def test_without_rich_the_table_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tokenway.cost.cli import main

    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if the bench extra were not installed
    assert main([*FLAGS, "--gpu", "L4"]) == 2
    assert "pip install 'tokenway[bench]', or pass --json" in capsys.readouterr().err
    assert main([*FLAGS, "--gpu", "L4", "--json"]) == 0


def test_cli_prices_the_gateways_own_ledger_with_its_bench(embedded_run: Path) -> None:
    # The question as a user asks it: this gateway's traffic (its ledger), at the throughput measured.
    results = bench_file.load(embedded_run / "results.json")
    done = _cost("--from-ledger", "--bench", str(embedded_run / "results.json"), "--gpu", "L4", "--model",
                 "SmolLM2-135M", "--json", env={"TOKENWAY_DATA_DIR": str(embedded_run), "TOKENWAY_DATABASE_URL": ""})
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    raw = json.loads((embedded_run / "results.json").read_text())
    served = sum(1 for run in raw["runs"] for r in run["requests"] if r["status"] == 200)  # warm-ups too
    assert doc["traffic"]["source"].startswith(f"usage ledger, last 7 days: {served} requests")
    # The ledger and the bench saw the same requests: the server's token counts agree.
    assert doc["traffic"]["prompt_tokens"]["max"] == max(results.prompt_tokens)
    assert doc["throughput"]["source"] == "measured"
