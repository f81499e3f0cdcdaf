"""Every fenced shell block of README.md and docs/*.md runs for real: a recipe that stops working fails CI.

Each page's blocks run in order, each with the real `bash -euo pipefail` (tests/doc_shell.py), so
every command must exit 0, and an `expect="text"` in a block's annotation must appear in its
output. `attribnet` runs through the CLI's own `main` in this process (TensorFlow imported once);
servers ("in another terminal": `coordinator serve`, `node serve`, `node join`) run as real
processes, each awaited until it logs that it serves or registered, and stopped with SIGTERM at
the end of the page (or at `stop="background"`), where each must exit 0.

Scenes (the word in a block's `<!-- doc-test: ... -->` annotation; tests/doc_blocks.py parses it):
- `repo` (the default, so a block without annotation still runs: none goes untested silently): a
  fresh working copy per page: `configs/` copied (sizes cut, ports replaced), `.venv/bin/attribnet`
  and `.venv/bin/activate`, `../shared/reference/paper_weights` linked when present, `IMAGE.png` (a
  128 px image). `needs="PAGE#N"`: the block continues in PAGE's working copy, after block N.
- `demo`: the served tiny network demo, shared with test_network_demo.py (tests/fixtures_demo.py):
  `demo-net/` is it, `configs/coordinator.yaml` is its admin config, `my-bilinear-images/` an
  organisation's 30 images; joined nodes are removed from its registry afterwards.
- `make`: `make TARGET` runs as `make -n TARGET` in the repository: the target exists and its
  recipe is sound. What the recipes run is tested for real elsewhere: `make demo`'s `attribnet
  demo` by the served demo (the same network demo, kept up), `make test` is CI itself (.ci/run),
  `make upscalers` is `make test`'s prerequisite there.
- `skip` (needs `reason`; at most one in all the docs, today `federation run --local`), and
  `same-as="PAGE"`: not run; its commands must appear verbatim in PAGE's run blocks.
- `requires="upscalers"` / `"paper-weights"`: as in test_upscalers.py / test_paper_weights.py, not
  run where the optional extra or ../shared is absent (CI has both); the page then reports a skip
  naming the block, after every other block passed.

Substitutions, the only differences from what a user types:
| the docs say | the test runs | why |
|---|---|---|
| ports 50051, 50061-50063, 50071 | free loopback ports (in commands and config copies) | parallel runs |
| `--image-size 64`, `--per-source 2000`, `--per-kind 100` | 32, 30, 2 (upscalers: 16 px, 8) | seconds, not minutes |
| `configs/coordinator.yaml`, `node-*.yaml` | copies with 32 px, 1-2 epochs, 16 negatives | likewise |
| `sha256:…` (the fingerprint enrol prints) | the scene's real fingerprint | a placeholder |
| `attribnet node join ...` | `... --epochs 2 --negatives 32` | likewise |
| `attribnet demo --serve ...` | must equal the served demo fixture + `--config` (2 generators, 30 images) | run once a session |
| `attribnet demo --offline ...` | must equal test_demo.py's run + `--tiny --data TINY_ZOO` | run once a session |
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.doc_blocks import DOC_PORTS, REPO, Block, commands, pages, read_blocks, substitute, substitute_ports
from tests.doc_shell import Background, Reply, install_shims, run_block, run_in_process
from tests.network_support import free_port
from tests.paper_reference import PAPER

NODE_READY = r"registered node \S+( \(source|; the coordinator audits)"
SERVERS = {("coordinator", "serve"): r"coordinator serving backbone", ("node", "serve"): NODE_READY,
           ("node", "join"): NODE_READY}
TINY_FLAGS = {("node", "join"): ["--epochs", "2", "--negatives", "32"]}
CONFIG_PATCHES = {
    "coordinator.yaml": {"data": {"image_size": 32}, "train": {"epochs": 1, "min_epochs": 1, "batch_size": 16},
                         "federation": {"head_train": {"epochs": 1, "batch_size": 16}, "wait_for_nodes": 60,
                                        "round_timeout": 240}},
    "node-*.yaml": {"negatives": {"count": 16, "generators": 2}, "train": {"epochs": 2, "min_epochs": 1, "batch_size": 16}},
}
BLOCK_TIMEOUT, SERVER_TIMEOUT = 420.0, 180.0
PAGES = [page for page in pages() if read_blocks(page)]


@dataclass
class Scene:
    """What one page's blocks share: a working folder, ports, servers it started, fixtures it maps onto."""

    cwd: Path
    request: pytest.FixtureRequest
    ports: dict[int, int]
    kind: str = "repo"
    fingerprint: str = ""
    background: Background = field(default=None)  # type: ignore[assignment]
    done: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.background = Background(self.cwd.parent / "logs")

    def handle(self, program: str, argv: list[str], cwd: Path) -> Reply:
        """One shim call: `make` dry-runs in the repository, `attribnet` runs as the scene says."""
        if program == "make":
            done = subprocess.run(["make", "-n", *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
            return Reply(done.returncode, done.stdout, done.stderr)
        words = [a for a in argv if not a.startswith("-")][:2]
        if words[:1] == ["demo"]:
            return self.demo(argv, cwd)
        key = tuple(words)
        argv = [*argv, *TINY_FLAGS.get(key, [])]
        if key in SERVERS and "--no-serve" not in argv:
            return self.background.start(argv, cwd, SERVERS[key], SERVER_TIMEOUT)
        return run_in_process(argv, cwd)

    def demo(self, argv: list[str], cwd: Path) -> Reply:
        """`attribnet demo`: the docs' command must be the shared fixture's run; its output folder is linked here."""
        from attribnet.cli import build_parser

        parse = build_parser().parse_args
        if parse(argv).offline:
            run = self.request.getfixturevalue("offline_demo")
            wanted = [*argv, "--tiny", "--data", str(self.request.getfixturevalue("tiny_zoo"))]
            fixture, code, text = run.argv, run.code, run.stdout
        else:
            served = self.request.getfixturevalue("served_demo").ensure()
            wanted = [*argv, "--config", str(served.config)]
            fixture, code, text = served.argv, 0, "".join(served.seen)
        mine, theirs = vars(parse(wanted)), vars(parse(fixture))
        for args, base in ((mine, cwd), (theirs, REPO)):
            args["config"] = yaml.safe_load((base / args["config"]).read_text())
            args.pop("handler")
        link, out = cwd / mine["out"], Path(theirs["out"])
        assert link.name == out.name, (wanted, fixture)
        if not link.exists():
            link.symlink_to(out, target_is_directory=True)
        assert link.resolve() == out.resolve(), (link, out)
        mine["out"] = theirs["out"]
        assert mine == theirs, f"the docs' `attribnet {' '.join(argv)}` is not the shared demo run {fixture}"
        return Reply(code, text)

    def run(self, block: Block, blocks: dict[str, Block]) -> None:
        """Runs `block` (after the block it `needs`), then checks its exit status and expected output."""
        needed = block.attrs.get("needs")
        if needed and needed not in self.done:
            self.run(blocks[needed], blocks)
        if block.attrs.get("stop") == "background":
            assert not (problems := self.background.stop()), problems
        text = substitute(block.text, self.ports, self.fingerprint)
        log = self.cwd.parent / "logs" / f"{block.name.replace('/', '_')}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        code, output, calls = run_block(text, self.cwd, [str(self.cwd / ".venv" / "bin")], self.handle, BLOCK_TIMEOUT, log)
        if code == 0:  # the next block is typed once what runs in the other terminals is up
            output += self.background.wait_ready()
        log.with_suffix(".calls").write_text("".join(f"{c.seconds:6.1f}s {c.program} {' '.join(c.argv)}\n" for c in calls))
        last = calls[-1] if calls else None
        assert code == 0, (f"{block.name} (line {block.line}) failed with {code}; last command "
                           f"{last.program if last else ''} {last.argv if last else ''}:\n{output[-4000:]}")
        expected = substitute(block.attrs.get("expect", ""), self.ports, self.fingerprint)
        assert expected in output, f"{block.name}: {expected!r} not in its output:\n{output[-4000:]}"
        self.done.add(block.name)


def _patch(data: dict, patch: dict) -> dict:
    for key, value in patch.items():
        data[key] = _patch(dict(data.get(key) or {}), value) if isinstance(value, dict) else value
    return data


def _venv(cwd: Path) -> None:
    """`.venv/bin/attribnet` (the shim) and `.venv/bin/activate`, as `make install` leaves them."""
    install_shims(cwd / ".venv" / "bin")
    (cwd / ".venv" / "bin" / "activate").write_text(f'export PATH="{cwd / ".venv" / "bin"}:$PATH"\n')


def repo_scene(root: Path, request: pytest.FixtureRequest) -> Scene:
    """A working copy as after `make install`: configs with tiny sizes and free ports, the paper's weights beside it."""
    ports = {port: free_port() for port in DOC_PORTS}
    cwd = root / "repo"
    (cwd / "configs").mkdir(parents=True)
    for source in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(substitute_ports(source.read_text(), ports))
        for pattern, patch in CONFIG_PATCHES.items():
            if source.match(pattern):
                data = _patch(data, patch)
        (cwd / "configs" / source.name).write_text(yaml.safe_dump(data, sort_keys=False))
    _venv(cwd)
    if PAPER.is_dir():
        (root / "shared" / "reference").mkdir(parents=True)
        (root / "shared" / "reference" / "paper_weights").symlink_to(PAPER, target_is_directory=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(cwd / "IMAGE.png")
    return Scene(cwd, request, ports)


def demo_scene(root: Path, request: pytest.FixtureRequest) -> Scene:
    """Beside the served demo: its folder as `demo-net/`, its admin config, an organisation's own images."""
    from attribnet.lab.datasets.zoo import ZooSettings, write_zoo
    from shared_backbone.model.signing import fingerprint, load_public_key

    served = request.getfixturevalue("served_demo").ensure()
    cwd = root / "demo"
    (cwd / "configs").mkdir(parents=True)
    (cwd / "demo-net").symlink_to(served.out, target_is_directory=True)
    (cwd / "configs" / "coordinator.yaml").symlink_to(served.out / "network" / "coordinator.yaml")
    write_zoo(root / "org-zoo", ZooSettings(image_size=32, per_source=30, seed=5, sources=("bilinear_b",)), workers=1)
    shutil.copytree(root / "org-zoo" / "bilinear_b", cwd / "my-bilinear-images")
    _venv(cwd)
    ports = {port: free_port() for port in DOC_PORTS} | {50051: served.port}
    key = fingerprint(load_public_key(served.out / "keys" / "coordinator.pub"))
    return Scene(cwd, request, ports, kind="demo", fingerprint=key)


def _forget_joined_nodes(request: pytest.FixtureRequest) -> None:
    """Nodes a page joined to the shared demo leave its registry, so the demo serves its own sources only."""
    from coordinator.registry import Registry
    from tests.fixtures_demo import DEMO_SOURCES

    served = request.getfixturevalue("served_demo")
    registry = Registry(served.out / "network" / "registry.sqlite", create=False)
    try:
        for entry in registry.list():
            if entry.source not in DEMO_SOURCES:
                registry.remove(entry.node_id)
    finally:
        registry.close()


def _missing(block: Block) -> str:
    """Why a block's requirement is absent here ("" when it is present, and always in CI)."""
    needed = block.attrs.get("requires")
    if needed == "paper-weights" and not PAPER.is_dir():
        return f"the paper's weights are not at {PAPER}"
    if needed == "upscalers":
        from tests.test_upscalers import MISSING

        return f"optional upscalers extra unavailable: {MISSING}" if MISSING else ""
    return ""


@pytest.fixture(scope="module")
def scenes() -> dict[tuple[str, str], Scene]:
    """(page, scene) -> Scene: a block that `needs` another page's block continues in that page's scene."""
    return {}


def _scene(block: Block, scenes: dict, factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Scene:
    owner = block.attrs["needs"].split("#")[0] if block.attrs.get("needs") else block.page
    key = (owner, block.scene)
    if key not in scenes:
        make = demo_scene if block.scene == "demo" else repo_scene
        scenes[key] = make(factory.mktemp(f"{Path(owner).stem}-{block.scene}"), request)
    scenes[key].request = request
    return scenes[key]


@pytest.mark.parametrize("page", PAGES)
def test_doc_blocks_run(page: str, scenes: dict, tmp_path_factory: pytest.TempPathFactory,
                        request: pytest.FixtureRequest) -> None:
    blocks = {b.name: b for p in pages() for b in read_blocks(p)}
    used: list[Scene] = []
    not_run = []
    try:
        for block in read_blocks(page):
            if block.scene == "skip" or "same-as" in block.attrs:
                continue
            if _missing(block):
                not_run.append(f"{block.name}: {_missing(block)}")
                continue
            scene = _scene(block, scenes, tmp_path_factory, request)
            used.append(scene)
            if block.name not in scene.done:  # it ran already as what another page's block needs
                scene.run(block, blocks)
    finally:
        problems = [p for scene in used for p in scene.background.stop()]  # stopping twice is a no-op
        if any(scene.kind == "demo" for scene in used):
            _forget_joined_nodes(request)
    assert not problems, problems
    if not_run:
        pytest.skip(f"every other block of {page} passed; not run here: {not_run}")


def test_every_shell_block_is_annotated_for_a_scene() -> None:
    """Annotations parse (read_blocks raises on a bad one), skips are rare, references name real blocks."""
    every = [b for p in pages() for b in read_blocks(p)]
    names = {b.name for b in every}
    assert len(every) >= 10 and {"README.md", "docs/running.md", "docs/join.md"} <= {b.page for b in every}
    assert sum(b.scene == "skip" for b in every) <= 1, [b.name for b in every if b.scene == "skip"]
    for block in every:
        assert block.attrs.get("needs", block.name) in names, block
        assert block.attrs.get("same-as", "README.md") in pages(), block


def test_same_as_blocks_repeat_commands_that_run() -> None:
    """A block shown twice (the README's join) is word for word one that runs on its own page."""
    for block in (b for p in pages() for b in read_blocks(p) if "same-as" in b.attrs):
        tested = {c for b in read_blocks(block.attrs["same-as"]) if "same-as" not in b.attrs and b.scene != "skip"
                  for c in commands(b.text)}
        missing = [c for c in commands(block.text) if c not in tested]
        assert not missing, f"{block.name}: not in a tested block of {block.attrs['same-as']}: {missing}"


def test_a_failing_command_stops_its_block_with_its_exit_code(tmp_path: Path) -> None:
    """The harness cannot pass a broken recipe: `set -e` stops at the first command that fails."""
    _venv(tmp_path)
    text = "source .venv/bin/activate\nattribnet data info --data no-such-folder\necho after"
    code, output, calls = run_block(text, tmp_path, [], lambda program, argv, cwd: run_in_process(argv, cwd), 60.0,
                                    tmp_path / "out.txt")
    assert code == 2 and "attribnet data: error:" in output and "after" not in output
    assert [c.argv[:2] for c in calls] == [["data", "info"]]


def test_substitutions_cut_sizes_and_ports_only() -> None:
    ports = {port: 60000 + i for i, port in enumerate(DOC_PORTS)}
    text = "attribnet data zoo --out data/zoo --image-size 64 --per-source 2000 --seed 0 # 50051\n" \
           "attribnet data upscalers --image-size 64 --per-source 1000\nattribnet node join --fingerprint sha256:3f5c…"
    assert substitute(text, ports, "ab12").splitlines() == [
        "attribnet data zoo --out data/zoo --image-size 32 --per-source 30 --seed 0 # 60000",
        "attribnet data upscalers --image-size 16 --per-source 8", "attribnet node join --fingerprint sha256:ab12"]
    assert commands("a \\\n    b  # note\n\n# only a comment\nc") == ["a b", "c"]
    assert os.environ.get("DOC_TEST_SOCKET") is None  # the shim's variable never leaks into the test process


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_point_at_files_and_headings() -> None:
    """Moving text between pages must not leave a link to a file or a section that is gone."""
    broken = []
    for page in [*pages(), "BENCHMARKS.md"]:
        text = re.sub(r"```.*?```", "", (REPO / page).read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / page).parent / path if path else REPO / page
            headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)} if file.is_file() else set()
            if not file.is_file() or (anchor and anchor not in headings):
                broken.append(f"{page}: {target}")
    assert not broken, broken

