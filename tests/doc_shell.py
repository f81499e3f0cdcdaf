"""Runs a doc block with the real bash; its `attribnet` and `make` calls come back to the test process.

bash does everything a user's shell does (variables, loops, globs, quoting, `source
.venv/bin/activate`, `set -e`). `attribnet` and `make` on its PATH are a few-line shim that sends
the argument vector and working directory over a unix socket and waits: the test process runs
the command (in process, so TensorFlow is imported once, not once per command; or as a real
background process for servers), answers with the exit code and output, and bash goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SHIM = """#!{python} -I
import json, os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(os.environ["DOC_TEST_SOCKET"])
request = {{"program": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd()}}
sock.sendall(json.dumps(request).encode() + b"\\n")
reply = json.loads(sock.makefile("rb").readline())
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""
PROGRAMS = ("attribnet", "make")


@dataclass
class Reply:
    """What a command gave back to bash."""

    code: int
    stdout: str = ""
    stderr: str = ""


@dataclass
class Call:
    """One command bash asked for, and its reply (for the failure message)."""

    program: str
    argv: list[str]
    cwd: str
    reply: Reply
    seconds: float = 0.0


def install_shims(folder: Path, programs: tuple[str, ...] = PROGRAMS) -> None:
    """`folder/attribnet`, `folder/make`: executables that hand their call to the test process."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in programs:
        path = folder / name
        path.write_text(SHIM.format(python=sys.executable))
        path.chmod(0o755)


def run_in_process(argv: list[str], cwd: Path) -> Reply:
    """`attribnet ARGV` through the CLI's own `main`, in `cwd`, with its stdout, stderr and log lines."""
    from attribnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level, previous = root.level, os.getcwd()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse refusing the arguments
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - a crash is the command's failure, reported with its traceback
        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(previous)
        root.removeHandler(handler)
        root.setLevel(level)
    return Reply(int(code or 0), out.getvalue(), err.getvalue())


@dataclass
class Server:
    """A background process, what its log says once it serves, and by when it must."""

    command: str
    process: subprocess.Popen
    log_path: Path
    ready: str
    deadline: float
    waited: bool = False


@dataclass
class Background:
    """Servers a block starts ("in another terminal"): real processes, ready before the next block runs."""

    log_dir: Path
    processes: list[Server] = field(default_factory=list)
    started: int = 0

    def start(self, argv: list[str], cwd: Path, ready: str, timeout: float) -> Reply:
        """Starts `attribnet ARGV` and returns at once: bash goes on while it starts, as a user would."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log_path = self.log_dir / f"background-{self.started}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "attribnet.cli", *argv], cwd=cwd, env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(Server(" ".join(argv), process, log_path, ready, time.monotonic() + timeout))
        return Reply(0, f"(started in the background: attribnet {' '.join(argv)}, log {log_path})\n")

    def wait_ready(self) -> str:
        """Waits until every server started since the last call logged its ready line; returns their logs.

        Raises AssertionError with the log of one that exited or was not ready in time."""
        texts = []
        for server in (s for s in self.processes if not s.waited):
            while not re.search(server.ready, text := server.log_path.read_text(errors="replace")):
                if server.process.poll() is not None:
                    raise AssertionError(f"`attribnet {server.command}` exited with {server.process.returncode} "
                                         f"before /{server.ready}/:\n{text[-4000:]}")
                if time.monotonic() > server.deadline:
                    raise AssertionError(f"`attribnet {server.command}` not ready (/{server.ready}/) in time:\n{text[-4000:]}")
                time.sleep(0.3)
            server.waited = True
            texts.append(text)
        return "".join(texts)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """SIGTERM to each (Ctrl-C in its terminal); returns what did not end cleanly with exit code 0."""
        for server in self.processes:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        problems = []
        for server in self.processes:
            try:
                code = server.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)
                code = server.process.wait(10)
                problems.append(f"`attribnet {server.command}` ignored SIGTERM for {timeout:.0f}s")
            if code != 0:
                tail = server.log_path.read_text(errors="replace")[-2000:]
                problems.append(f"`attribnet {server.command}` exited with {code} after SIGTERM:\n{tail}")
        self.processes.clear()
        return problems


def run_block(text: str, cwd: Path, path: list[str], handle: Callable[[str, list[str], Path], Reply],
              timeout: float, output: Path) -> tuple[int, str, list[Call]]:
    """Runs `text` with `bash -euo pipefail` in `cwd`; `handle(program, argv, cwd)` answers each shim call.

    Returns (bash's exit code, its output (also in `output`), the calls), all within `timeout` seconds.
    """
    socket_dir = Path(tempfile.mkdtemp(prefix="doc", dir="/tmp"))  # unix socket paths are limited to ~100 bytes
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(socket_dir / "s"))
    server.listen(1)
    server.settimeout(0.2)
    env = {**os.environ, "DOC_TEST_SOCKET": str(socket_dir / "s"), "PATH": os.pathsep.join([*path, os.environ["PATH"]])}
    calls: list[Call] = []
    deadline = time.monotonic() + timeout
    try:
        with open(output, "w") as sink:
            bash = subprocess.Popen(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while bash.poll() is None:
            if time.monotonic() > deadline:
                bash.kill()
                bash.wait()
                raise AssertionError(f"the block took longer than {timeout:.0f}s; calls so far: {[c.argv for c in calls]}")
            with contextlib.suppress(socket.timeout):
                connection, _ = server.accept()
                calls.append(_answer(connection, handle))
        return bash.returncode, output.read_text(errors="replace"), calls
    finally:
        server.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _answer(connection: socket.socket, handle: Callable[[str, list[str], Path], Reply]) -> Call:
    with connection:
        connection.settimeout(None)
        request = json.loads(connection.makefile("rb").readline())
        began = time.monotonic()
        reply = handle(request["program"], request["argv"], Path(request["cwd"]))
        seconds = time.monotonic() - began
        connection.sendall(json.dumps({"code": reply.code, "stdout": reply.stdout, "stderr": reply.stderr}).encode() + b"\n")
    return Call(request["program"], request["argv"], request["cwd"], reply, seconds)
