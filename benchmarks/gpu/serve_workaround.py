"""Serve a bench config with the same app and uvicorn settings as ``tokenway serve``, when its YAML
cannot load because a deployment's ``engine:`` key is taken by the gateway's own ``engine:`` field
(vLLM/SGLang metrics scraping) before it reaches ``provider: local``'s options.

run_gpu_bench.sh uses this only if ``tokenway check-config`` rejects the bench config; the run's
env.txt then says so. It loads the YAML with ``engine`` removed and sets it on the local options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    import uvicorn

    from tokenway.app import create_app
    from tokenway.config import GatewayConfig, Settings
    from tokenway.providers.local.options import LocalOptions

    data = yaml.safe_load(args.config.read_text())
    engines = []
    for model in data["models"]:
        for deployment in model["deployments"]:
            engines.append(deployment.pop("engine", None))
    config = GatewayConfig.model_validate(data)
    deployments = [d for m in config.models for d in m.deployments]
    for deployment, engine in zip(deployments, engines, strict=True):
        if engine is not None and isinstance(deployment.options, LocalOptions):
            deployment.options = deployment.options.model_copy(update={"engine": engine})
    uvicorn.run(
        create_app(Settings(port=args.port), config),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="info",
        backlog=4096,
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
