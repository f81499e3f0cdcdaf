"""`attribnet federation …`: the Flower run that sends the backbone to every node and registers their heads.

    attribnet federation run --config coordinator.yaml --nodes nodes.yaml --simulation
    attribnet federation run --config coordinator.yaml --nodes nodes.yaml --local
    attribnet federation run --config coordinator.yaml --superlink HOST:PORT [--insecure | --root-certificates CA]
    attribnet federation superlink [--port 9091] [--insecure | --ssl-ca CA --ssl-cert C --ssl-key K]
    attribnet federation supernode --superlink HOST:PORT --node-config node.yaml [--finetune]

`nodes.yaml` lists one mapping per node with the ClientApp's node-config keys (source, data-dir,
state-dir, public-key, endpoint, reference, node-id, secret-file, config, finetune).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

NODE_LIST_KEY = "nodes"


def _read_nodes(path: str) -> list[dict[str, Any]]:
    from shared_backbone.config import ConfigError, read_yaml

    data = read_yaml(path)
    nodes = data.get(NODE_LIST_KEY)
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, dict) for n in nodes):
        raise ConfigError(f"{path}: expected `{NODE_LIST_KEY}:` with a list of node-config mappings")
    unknown = sorted(set(data) - {NODE_LIST_KEY})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (allowed: {NODE_LIST_KEY})")
    return nodes


def _coordinator_config(args: argparse.Namespace):
    from coordinator.config import CoordinatorConfig
    from shared_backbone.config import load_config, resolve_paths

    overrides = {
        "bundle": args.bundle,
        "registry": args.registry,
        "federation.result_file": args.result,
        "federation.min_nodes": args.min_nodes,
        "federation.round_timeout": args.round_timeout,
        "federation.finetune_rounds": args.finetune_rounds,
    }
    return resolve_paths(load_config(CoordinatorConfig, args.config, overrides), os.getcwd())


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    print(f"federation {result.status}: backbone {result.backbone.get('version')} ({str(result.backbone.get('digest'))[:12]}), "
          f"{len(result.registered)} registered, {len(result.problems)} not")
    for node in result.nodes:
        registration = node.registration
        detail = f"head {registration.head_digest[:12]} at {registration.endpoint}" if registration and node.status == "registered" else node.error
        print(f"  {node.source or node.flower_node_id}: {node.status}: {detail}")
    if result.finetune:
        print(f"  fine-tuned bundle: {result.finetune.get('bundle')} (parent {str(result.finetune.get('parent'))[:12]})")


def _run(args: argparse.Namespace) -> int:
    from attribnet.launch import flower_processes as fp
    from attribnet.launch import flower_runs

    config = _coordinator_config(args)
    modes = [m for m in ("simulation", "local", "superlink") if getattr(args, m)]
    if len(modes) != 1:
        raise ValueError("choose exactly one of --simulation, --local, --superlink HOST:PORT")
    if modes[0] in ("simulation", "local"):
        if not args.nodes:
            raise ValueError(f"--{modes[0]} needs --nodes nodes.yaml (one node-config mapping per node)")
        nodes = _read_nodes(args.nodes)
        if modes[0] == "simulation":
            result = flower_runs.run_simulation(config, nodes, cpus_per_node=args.cpus_per_node)
        else:
            workdir = Path(args.workdir or Path(config.federation.result_file).parent / "flower")
            result = flower_runs.run_local_deployment(config, nodes, workdir, timeout=args.timeout)
    else:
        workdir = Path(args.workdir or Path(config.federation.result_file).parent / "flower").resolve()
        flwr_home = workdir / "flwr-home"
        fp.write_connection(flwr_home, args.superlink, insecure=args.insecure, root_certificates=args.root_certificates)
        config_path = flower_runs.write_coordinator_yaml(config, workdir / "coordinator.yaml")
        result = flower_runs.submit_run(config_path, config.federation.result_file, fp.flower_env(flwr_home), timeout=args.timeout)
    _print_result(result, args.json)
    return 0 if result.status == "completed" else 1


def _wait_for_signal(processes) -> int:
    """Keeps the Flower process(es) up until SIGINT/SIGTERM or until one exits; then stops all."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    while not stop.wait(1.0):
        dead = [p for p in processes if not p.alive()]
        if dead:
            print(f"{dead[0].name} exited with code {dead[0].popen.returncode}; see {dead[0].log_path}", file=sys.stderr)
            code = 1
            break
    for process in processes:
        process.stop()
    return code


def _superlink(args: argparse.Namespace) -> int:
    from attribnet.launch import flower_processes as fp
    from shared_backbone.runtime.rpc import is_loopback

    if not is_loopback(args.host) and not args.expose_control_api:
        raise ValueError(
            f"--host {args.host}: flwr 1.42 serves its unauthenticated Control API (flwr run/ls/stop) on the same port as "
            "the Fleet API, so anyone reaching it can run code on this host; keep the SuperLink on 127.0.0.1 behind a "
            "proxy that forwards only /v1/fleet/, or pass --expose-control-api to accept that"
        )
    ssl = (args.ssl_ca, args.ssl_cert, args.ssl_key) if args.ssl_cert else None
    if not ssl and not args.insecure:
        raise ValueError("give --ssl-ca/--ssl-cert/--ssl-key for TLS, or --insecure for plaintext on a trusted network")
    workdir = Path(args.workdir).resolve()
    process, address = fp.start_superlink(
        workdir, host=args.host, port=args.port, insecure=args.insecure, ssl_files=ssl,
        enable_supernode_auth=args.enable_supernode_auth, database=args.database,
    )
    print(f"superlink listening on {address} (log {process.log_path})", flush=True)
    return _wait_for_signal([process])


def _supernode(args: argparse.Namespace) -> int:
    from attribnet.launch import flower_processes as fp

    node_config: dict[str, Any] = {"config": str(Path(args.node_config).resolve()), "workdir": os.getcwd()}
    if args.finetune:
        node_config["finetune"] = True
    workdir = Path(args.workdir).resolve()
    process = fp.start_supernode(
        args.superlink, workdir, name="supernode", node_config=node_config, port=args.port, insecure=args.insecure,
        root_certificates=args.root_certificates, auth_private_key=args.auth_private_key,
    )
    print(f"supernode connecting to {args.superlink} (log {process.log_path})", flush=True)
    return _wait_for_signal([process])


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "federation", help="the Flower run that trains every node's head", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="send the bundle to every node, register their heads, write the result JSON")
    run.add_argument("--config", help="coordinator YAML (bundle, public_key, registry, federation.*)")
    mode = run.add_argument_group("where the nodes are (exactly one)")
    mode.add_argument("--simulation", action="store_true", help="Flower's Simulation Engine in this process (needs --nodes)")
    mode.add_argument("--local", action="store_true", help="a real SuperLink + one SuperNode per node on loopback (needs --nodes)")
    mode.add_argument("--superlink", metavar="HOST:PORT", help="submit to a running SuperLink whose SuperNodes are up")
    run.add_argument("--nodes", help="YAML with `nodes:` = list of node-config mappings (simulation, local)")
    run.add_argument("--insecure", action="store_true", help="plaintext connection to --superlink")
    run.add_argument("--root-certificates", help="CA certificate of a TLS SuperLink")
    run.add_argument("--bundle", help="override `bundle`")
    run.add_argument("--registry", help="override `registry`")
    run.add_argument("--result", help="override `federation.result_file`")
    run.add_argument("--min-nodes", type=int, help="override `federation.min_nodes`")
    run.add_argument("--round-timeout", type=float, help="override `federation.round_timeout` (seconds)")
    run.add_argument("--finetune-rounds", type=int, help="override `federation.finetune_rounds`")
    run.add_argument("--cpus-per-node", type=float, default=1.0, help="simulation: CPUs reserved per virtual node")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the whole run (deployment)")
    run.add_argument("--workdir", help="where Flower logs and FLWR_HOME go (default: next to the result file)")
    run.add_argument("--json", action="store_true", help="print the result JSON")
    run.set_defaults(handler=_run)

    link = actions.add_parser("superlink", help="start a SuperLink and keep it up until interrupted")
    link.add_argument("--host", default="127.0.0.1", help="listen address (off loopback needs --expose-control-api)")
    link.add_argument("--expose-control-api", action="store_true",
                      help="accept that a non-loopback --host also exposes Flower's Control API (flwr 1.42 has one port)")
    link.add_argument("--port", type=int, default=9091)
    link.add_argument("--insecure", action="store_true", help="plaintext (trusted networks and tests only)")
    link.add_argument("--ssl-ca", help="CA certificate (PEM)")
    link.add_argument("--ssl-cert", help="server certificate (PEM)")
    link.add_argument("--ssl-key", help="server private key (PEM)")
    link.add_argument("--enable-supernode-auth", action="store_true", help="only SuperNodes whose public keys are registered may join")
    link.add_argument("--database", help="SQLite file for the SuperLink's state (default: in memory)")
    link.add_argument("--workdir", default="flower-superlink", help="log and FLWR_HOME folder")
    link.set_defaults(handler=_superlink)

    node = actions.add_parser("supernode", help="start this organisation's SuperNode and keep it up until interrupted")
    node.add_argument("--superlink", required=True, metavar="HOST:PORT")
    node.add_argument("--node-config", required=True, help="node YAML (source, data, state_dir, public_key, serve.advertise)")
    node.add_argument("--finetune", action="store_true", help="take part in federated fine-tuning of the primary module")
    node.add_argument("--port", type=int, help="local port for the SuperNode's ClientApp API (default: a free one)")
    node.add_argument("--insecure", action="store_true", help="plaintext connection to the SuperLink")
    node.add_argument("--root-certificates", help="CA certificate of a TLS SuperLink")
    node.add_argument("--auth-private-key", help="this SuperNode's private key (SuperLink with --enable-supernode-auth)")
    node.add_argument("--workdir", default="flower-supernode", help="log and FLWR_HOME folder")
    node.set_defaults(handler=_supernode)
