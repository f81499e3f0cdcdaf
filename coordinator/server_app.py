"""The coordinator's Flower `ServerApp` (Message API): one run trains every connected node's head.

Deployment (`flwr run`): settings come from the run config (`[tool.flwr.app.config]` in
pyproject.toml, overridden by `--run-config`): `coordinator-config` (the coordinator YAML),
`workdir` (what relative paths in it are relative to), `result-file`, `min-nodes`.
Simulation: `make_server_app(config)` closes over a ready CoordinatorConfig instead.
The logic itself is in `coordinator.flower`.
"""

from __future__ import annotations

import logging
import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import CoordinatorConfig
from coordinator.flower.run import run_federation_round
from shared_backbone.config import load_config, resolve_paths

log = logging.getLogger(__name__)


def config_from_run_config(run_config: dict) -> CoordinatorConfig:
    """CoordinatorConfig from Flower run-config keys (empty/zero values mean "keep the YAML's")."""
    overrides = {}
    if run_config.get("result-file"):
        overrides["federation.result_file"] = str(run_config["result-file"])
    if int(run_config.get("min-nodes", 0) or 0) > 0:
        overrides["federation.min_nodes"] = int(run_config["min-nodes"])
    if float(run_config.get("round-timeout", 0) or 0) > 0:
        overrides["federation.round_timeout"] = float(run_config["round-timeout"])
    if int(run_config.get("finetune-rounds", -1)) >= 0:
        overrides["federation.finetune_rounds"] = int(run_config["finetune-rounds"])
    path = str(run_config.get("coordinator-config", "") or "") or None
    config = load_config(CoordinatorConfig, path, overrides)
    workdir = str(run_config.get("workdir", "") or "") or (os.path.dirname(os.path.abspath(path)) if path else os.getcwd())
    return resolve_paths(config, workdir)


def make_server_app(config: CoordinatorConfig | None = None) -> ServerApp:
    """A ServerApp running one federation round with `config`, or with the run config when None."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation_round(grid, config if config is not None else config_from_run_config(dict(context.run_config)))

    return server_app


app = make_server_app()
