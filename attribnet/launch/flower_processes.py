"""Starting, watching and stopping Flower's Deployment Engine processes on this machine.

Every process gets Flower's offline switches and the virtual environment's `bin/` on PATH
(SuperLink and SuperNode start `flower-superexec`, `flwr-serverapp`, `flwr-clientapp` by bare
name), runs in its own session (setsid) and is stopped by signalling its whole process group:
killing only the PID leaves children retrying for seconds. Every wait is bounded.

Used by `attribnet federation superlink|supernode|run --superlink`, the tests and the demo; a whole
local deployment (SuperLink + SuperNodes, SuperNode keys) is `flower_deployment.py`'s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
CONNECTION_NAME = "attribnet"
TERMINAL_STATUS_PREFIX = "finished"


class FlowerProcessError(RuntimeError):
    """A Flower process that did not start, exited early, or a command that failed."""


def venv_bin() -> Path:
    """The `bin/` folder of the interpreter running us (where flwr's executables live)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: str | Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for any Flower process: offline switches, venv on PATH, own FLWR_HOME."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just reported free (tests and the demo pick ports this way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """One TOML scalar, as Flower parses `--node-config` / `--run-config` values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def format_config_pairs(values: Mapping[str, Any]) -> str:
    """`{'source': 'a', 'epochs': 2}` -> `source="a" epochs=2` (space separated TOML pairs)."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


@dataclass
class FlowerProcess:
    """A process started in its own session; `stop()` signals the whole group."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `timeout`; returns the exit code."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop on %s", self.name, self.pid, sig.name)
        return self.popen.poll()


def start_process(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: str | Path) -> FlowerProcess:
    """Starts `argv` in a new session with stdout+stderr appended to `log_path`."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as handle:
        try:
            popen = subprocess.Popen(
                list(argv), env=dict(env), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except FileNotFoundError:
            raise FlowerProcessError(f"{name}: executable {argv[0]!r} not found (is the virtual environment's bin/ on PATH?)") from None
    log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
    return FlowerProcess(name, popen, log_path)


def wait_http_ok(url: str, timeout: float, process: FlowerProcess | None = None) -> None:
    """Polls `url` until it answers 200; fails early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise FlowerProcessError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    tail = f":\n{process.log_tail()}" if process is not None else ""
    raise FlowerProcessError(f"{url} not ready after {timeout:.0f} s{tail}")


def start_superlink(
    workdir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    insecure: bool = True,
    ssl_files: tuple[str, str, str] | None = None,
    enable_supernode_auth: bool = False,
    database: str | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> tuple[FlowerProcess, str]:
    """Starts `flower-superlink` and waits for its /health; returns (process, "host:port").

    `ssl_files` = (ca_cert, server_cert, server_key) turns TLS on (then `insecure` is ignored).
    """
    workdir = Path(workdir)
    port = port or free_port(host)
    argv = [str(venv_bin() / "flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if ssl_files:
        ca, cert, key = ssl_files
        argv += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
    elif insecure:
        argv.append("--insecure")
    if enable_supernode_auth:
        argv.append("--enable-supernode-auth")
    if database:
        argv += ["--database", database]
    process = start_process("superlink", argv, env or flower_env(workdir / "flwr-home"), workdir / "superlink.log")
    scheme = "https" if ssl_files else "http"
    try:
        if scheme == "http":
            wait_http_ok(f"http://{host}:{port}/health", ready_timeout, process)
        else:
            wait_port_open(host, port, ready_timeout, process)
    except BaseException:
        process.stop()
        raise
    return process, f"{host}:{port}"


def wait_port_open(host: str, port: int, timeout: float, process: FlowerProcess | None = None) -> None:
    """Waits until something accepts TCP connections on host:port (TLS endpoints)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise FlowerProcessError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise FlowerProcessError(f"{host}:{port} not accepting connections after {timeout:.0f} s")


def start_supernode(
    superlink: str,
    workdir: str | Path,
    *,
    name: str = "supernode",
    node_config: Mapping[str, Any] | None = None,
    port: int | None = None,
    insecure: bool = True,
    root_certificates: str | None = None,
    auth_private_key: str | None = None,
    env: Mapping[str, str] | None = None,
    max_wait_time: float = 120.0,
) -> FlowerProcess:
    """Starts `flower-supernode` connected to `superlink` with its own local port and node config."""
    workdir = Path(workdir)
    port = port or free_port()
    argv = [
        str(venv_bin() / "flower-supernode"),
        "--superlink", superlink,
        "--port", str(port),
        "--max-wait-time", str(max_wait_time),
    ]
    if root_certificates:
        argv += ["--root-certificates", root_certificates]
    elif insecure:
        argv.append("--insecure")
    if auth_private_key:
        argv += ["--auth-supernode-private-key", auth_private_key]
    if node_config:
        argv += ["--node-config", format_config_pairs(node_config)]
    process = start_process(name, argv, env or flower_env(workdir / "flwr-home"), workdir / f"{name}.log")
    time.sleep(0.3)
    if not process.alive():
        raise FlowerProcessError(f"{name} exited at start with code {process.popen.returncode}:\n{process.log_tail()}")
    return process


def write_connection(flwr_home: str | Path, address: str, *, name: str = CONNECTION_NAME, insecure: bool = True,
                     root_certificates: str | None = None) -> Path:
    """Writes `$FLWR_HOME/config.toml` with one SuperLink connection, made the default."""
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f"default = {toml_value(name)}", "", f"[superlink.{name}]", f"address = {toml_value(address)}"]
    if root_certificates:
        lines.append(f"root-certificates = {toml_value(root_certificates)}")
    else:
        lines.append(f"insecure = {toml_value(insecure)}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def flwr_command(args: Sequence[str], env: Mapping[str, str], timeout: float, cwd: str | Path | None = None) -> str:
    """Runs `flwr ARGS` from the environment's bin/; its stdout, or FlowerProcessError with the last lines of its output."""
    argv = [str(venv_bin() / "flwr"), *args]
    try:
        done = subprocess.run(argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FlowerProcessError(f"`flwr {' '.join(args[:2])}` did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        raise FlowerProcessError(f"`flwr {' '.join(args[:2])}` failed with code {done.returncode}: {' | '.join(detail)}")
    return done.stdout


def last_json(text: str) -> dict[str, Any]:
    """Flower prints banners before its JSON; take the last JSON object in the output."""
    start = text.rfind("\n{")
    candidate = text[start + 1 :] if start >= 0 else text[text.find("{") :]
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        raise FlowerProcessError(f"unexpected flwr output (no JSON): {text.strip()[-300:]}") from None


def flwr_run(app_dir: str | Path, run_config: Mapping[str, Any], env: Mapping[str, str], *,
             connection: str = CONNECTION_NAME, timeout: float = 120.0) -> int:
    """Packs and submits the app (`flwr run APP CONNECTION`); returns the run id."""
    args = ["run", str(app_dir), connection, "--format", "json"]
    if run_config:
        args += ["--run-config", format_config_pairs(run_config)]
    payload = last_json(flwr_command(args, env, timeout, cwd=app_dir))
    if not payload.get("success") or not payload.get("run-id"):
        raise FlowerProcessError(f"flwr run did not start a run: {payload}")
    return int(payload["run-id"])


def run_status(run_id: int, env: Mapping[str, str], *, connection: str = CONNECTION_NAME, timeout: float = 60.0) -> str:
    """The run's status text from `flwr ls --format json`, e.g. `finished:completed`."""
    payload = last_json(flwr_command(["ls", connection, "--run-id", str(run_id), "--format", "json"], env, timeout))
    for run in payload.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status"))
    raise FlowerProcessError(f"run {run_id} not listed by flwr ls")


def wait_run_finished(run_id: int, env: Mapping[str, str], timeout: float, *, connection: str = CONNECTION_NAME,
                      poll: float = 2.0) -> str:
    """Polls the run status until it starts with `finished`; returns it (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(run_id, env, connection=connection)
        if status.startswith(TERMINAL_STATUS_PREFIX):
            return status
        time.sleep(poll)
    raise FlowerProcessError(f"run {run_id} still {status!r} after {timeout:.0f} s")
