"""What a person meets first at the command line: flags checked with a one-line reason, folder
search that picks up exactly the formats the decoder accepts, a partial answer that says so in its
headline, a preset that unset flags leave alone, and output piped into `head` without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from attribnet.cli import build_parser, main


@pytest.mark.parametrize("argv, reason", [
    (["query", "--gateway", "127.0.0.1", "x.png"], "is not HOST:PORT"),
    (["query", "--gateway", "gateway.example:http", "x.png"], "is not HOST:PORT"),
    (["query", "--batch-size", "0", "x.png"], "must be at least 1, got 0"),
])
def test_query_flags_are_refused_with_their_reason(argv, reason, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err


def test_query_accepts_host_port_and_ipv6():
    parser = build_parser()
    assert parser.parse_args(["query", "--gateway", "[::1]:50051", "x"]).gateway == "[::1]:50051"
    assert parser.parse_args(["query", "--gateway", "localhost:7", "x"]).gateway == "localhost:7"


def test_tiny_demo_keeps_its_preset_unless_a_flag_is_given():
    from attribnet.commands.demo import TINY, config_overrides

    parser = build_parser()
    tiny = config_overrides(parser.parse_args(["demo", "--tiny"]))
    assert tiny["zoo.per_source"] == TINY["zoo.per_source"] and tiny["zoo.image_size"] == TINY["zoo.image_size"]
    bigger = config_overrides(parser.parse_args(["demo", "--tiny", "--per-source", "99"]))
    assert bigger["zoo.per_source"] == 99 and bigger["zoo.image_size"] == TINY["zoo.image_size"]


def test_folder_search_finds_exactly_the_formats_the_decoder_accepts(tmp_path):
    from shared_backbone.data.datasets import expand_image_paths

    for name in ("a.png", "b.gif", "c.JPG", "d.tif", "e.tiff", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = sorted(path.name for path, _ in expand_image_paths([str(tmp_path)]))
    assert found == ["a.png", "b.gif", "c.JPG"]


def test_a_partial_answer_says_so_in_its_headline():
    from attribnet.commands.query import _table

    record = {
        "path": "x.png", "attribution": "tconv_a", "fake_score": 0.9, "backbone": {"version": "1", "digest": "ab" * 32},
        "scores": {"tconv_a": 0.8}, "raw_scores": {"tconv_a": 0.7}, "thresholds": {"tconv_a": 0.5},
        "p_values": {"tconv_a": 0.4}, "prediction_set": ["tconv_a"], "alpha": 0.05,
        "missing_nodes": ["node-nnconv_a"], "missing_reasons": {"node-nnconv_a": "deadline exceeded"},
    }
    headline = _table(record).splitlines()[0]
    assert "PARTIAL" in headline and "node-nnconv_a (deadline exceeded)" in headline
    whole = _table({**record, "missing_nodes": [], "missing_reasons": {}}).splitlines()[0]
    assert "PARTIAL" not in whole


def test_the_table_says_why_after_the_scores():
    from attribnet.commands.query import _table
    from shared_backbone.model.rule import REASONS

    record = {
        "path": "x.png", "attribution": "unknown", "reason": "atypical", "fake_score": 0.9,
        "backbone": {"version": "1", "digest": "ab" * 32}, "scores": {"tconv_a": 0.8}, "raw_scores": {"tconv_a": 0.7},
        "thresholds": {"tconv_a": 0.5}, "p_values": {"tconv_a": 0.4}, "prediction_set": ["tconv_a"], "alpha": 0.05,
        "typicality_p_values": {"tconv_a": 0.01}, "missing_nodes": [], "missing_reasons": {},
    }
    lines = _table(record).splitlines()
    assert lines[-2].startswith("  prediction set at alpha 0.05") and lines[-1] == f"  why: {REASONS['atypical']}"
    assert "why:" not in _table({**record, "reason": "out_of_scope", "out_of_scope": "too small to judge (8x8)"})


def test_output_piped_into_head_ends_quietly(tmp_path):
    """Thousands of answer lines (here: files that cannot be read, so no gateway is needed) into a
    reader that leaves after one line: no traceback, no 'Broken pipe' noise."""
    paths = [str(tmp_path / f"missing-{i}.png") for i in range(3000)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "attribnet.cli", "query", "--gateway", "127.0.0.1:9", *paths],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert b"missing-0.png: ERROR" in first
    assert "Traceback" not in stderr and "Broken pipe" not in stderr and "BrokenPipe" not in stderr, stderr[-2000:]


def test_bench_baseline_judges_a_dataset_at_its_own_size(tmp_path):
    """A 48-px zoo is trained at 48 px unless --image-size or the YAML says otherwise (it used to fail
    with 'normstats shape (128, 128) does not match' unless told twice)."""
    import json

    from attribnet.commands.bench.baseline import dataset_image_size

    data = tmp_path / "zoo"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"image_size": 48}))
    parser = build_parser()
    assert dataset_image_size(parser.parse_args(["bench", "baseline", "--data", str(data)])) == 48
    assert dataset_image_size(parser.parse_args(["bench", "baseline", "--data", str(data), "--image-size", "32"])) == 32
    config = tmp_path / "b.yaml"
    config.write_text("data:\n  image_size: 64\n")
    assert dataset_image_size(parser.parse_args(["bench", "baseline", "--data", str(data), "--config", str(config)])) is None
    assert dataset_image_size(parser.parse_args(["bench", "baseline", "--data", str(tmp_path)])) is None


def test_every_leaf_help_page_says_what_the_command_does():
    import argparse

    from attribnet.cli import build_parser

    def leaves(parser: argparse.ArgumentParser, path: str):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for sub in subs:
            for name, child in sub.choices.items():
                yield from leaves(child, f"{path} {name}")

    found = list(leaves(build_parser(), "attribnet"))
    assert len(found) > 20
    for path, parser in found:
        assert parser.description and len(parser.description) > 30, f"`{path} --help` does not say what it does"
