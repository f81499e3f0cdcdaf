"""The two demo runs the suite shares, each made once a session: the served network demo and the offline demo.

Each costs tens of seconds on 2 cores and two test files need each: test_network_demo.py and
test_demo.py check what they produce, test_doc_commands.py checks that the README's and docs'
`attribnet demo` commands are exactly these runs (after its documented substitutions).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

__all__ = ["DEMO_SOURCES", "READY", "ServedDemo", "OfflineDemo", "served_demo", "offline_demo", "descendants",
           "started_for", "alive"]

PROJECT = Path(__file__).resolve().parent.parent
DEMO_SOURCES = ["tconv_a", "nnconv_a"]
# The network demo at the size CI affords: 2 generators, 30 images each, 2 + 1 epochs (make demo: 5 x 480).
TINY_NETWORK = {
    "zoo": {"image_size": 32, "per_source": 30, "sources": DEMO_SOURCES, "workers": 1},
    "primary": {"epochs": 2, "min_epochs": 1}, "head": {"epochs": 1, "min_epochs": 1},
    # Trained for 1-2 epochs on 30 images a source, this network's detector calls almost every canary
    # fake and one head claims them all (measured: 41 of 41 real, 109 of 109 renders), as a claim-everything
    # attacker would: the audit runs and is checked, its quarantine bounds are opened for this size only.
    "audit": {"tolerance_real": 1.0, "tolerance_own_generators": 1.0, "tolerance_per_source": 1.0},
}
READY = "gateway listening on "
START_TIMEOUT = 240.0


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc, no extra dependency)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def started_for(out: Path) -> set[int]:
    """Processes whose command line names this output folder (orphans of a killed demo)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_lines(stream, lines: "queue.Queue[str]") -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


@dataclass
class ServedDemo:
    """`attribnet demo --serve` at the tiny size, started on first use and kept up for the session.

    `ensure()` starts it (again, in a fresh folder, if an earlier test stopped it); `seen` holds its
    output up to the ready line, `lines` what it prints after."""

    root: Path
    config: Path
    port: int = 0
    out: Path = Path()
    process: subprocess.Popen | None = None
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    gateway: str = ""
    runs: int = 0

    @property
    def argv(self) -> list[str]:
        return ["demo", "--config", str(self.config), "--out", str(self.out), "--serve", "--port", str(self.port)]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def folder(self) -> Path:
        """The output folder of a run (its trained network stays there after it stopped); starts one if none ran."""
        return self.out if self.runs and self.gateway else self.ensure().out

    def ensure(self) -> "ServedDemo":
        if not self.running():
            self.start()
        return self

    def start(self) -> None:
        from attribnet.launch.flower_processes import free_port

        self.runs += 1
        self.out, self.port = self.root / f"run-{self.runs}" / "demo-net", free_port()
        self.out.parent.mkdir(parents=True)
        self.lines, self.seen, self.gateway = queue.Queue(), [], ""
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "attribnet.cli", *self.argv], cwd=self.out.parent, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        threading.Thread(target=_read_lines, args=(self.process.stdout, self.lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.gateway and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line == "":
                break
            self.seen.append(line)
            if READY in line:
                self.gateway = line.split(READY, 1)[1].strip()
        if not self.gateway:
            self.kill()
            raise AssertionError("no 'gateway listening on' line; output tail:\n" + "".join(self.seen[-30:]))

    def kill(self) -> None:
        """Ends the demo and every process it started (node and gateway processes run in their own sessions)."""
        if self.process is None:
            return
        for pid in descendants(self.process.pid) | started_for(self.out) | {self.process.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory):
    """The served tiny network demo (call `.ensure()`); every process it started is ended after the session."""
    root = tmp_path_factory.mktemp("served-demo")
    config = root / "tiny-network-demo.yaml"
    config.write_text(yaml.safe_dump(TINY_NETWORK))
    demo = ServedDemo(root=root, config=config)
    yield demo
    demo.kill()


@dataclass(frozen=True)
class OfflineDemo:
    """One `attribnet demo --offline` run: its arguments, exit code, stdout and output folder."""

    argv: list[str]
    code: int
    stdout: str
    out: Path


@pytest.fixture(scope="session")
def offline_demo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> OfflineDemo:
    """`attribnet demo --offline --config configs/demo.yaml` with `--tiny` on the session's tiny zoo."""
    from attribnet.cli import main

    out = tmp_path_factory.mktemp("offline-demo") / "demo-offline"
    argv = ["demo", "--offline", "--config", str(PROJECT / "configs" / "demo.yaml"), "--out", str(out),
            "--tiny", "--data", str(tiny_zoo)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", *argv])
    return OfflineDemo(argv=argv, code=code, stdout=printed.getvalue(), out=out)
