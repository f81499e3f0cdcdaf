"""The Markdown tables of `attribnet bench serving` (BENCHMARKS.md's serving section), from its report."""

from __future__ import annotations

from typing import Any

BEGIN = "<!-- bench-serving:begin -->"
END = "<!-- bench-serving:end -->"


def _spread(row: dict[str, Any]) -> str:
    return f"{row['images_per_s']:.0f} ({row['min_images_per_s']:.0f}–{row['max_images_per_s']:.0f})"


def _load(report: dict[str, Any]) -> str:
    load = report["machine"].get("load_average")
    return f": 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end" if load else ""


def _header(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    return [
        f"Measured {report['created']} by `attribnet bench serving` on {report['machine']['platform']} "
        f"({report['machine']['cpus']} CPUs, shared with other jobs{_load(report)}), {s['image_size']} px random-noise PNGs, untrained "
        f"models; medians of {s['repeats']} window(s) of {s['seconds']:g} s after {s['warmup_seconds']:g} s of warm-up, "
        f"spread min–max in brackets; whole run {report['wall_seconds'] / 60:.1f} min.",
        "",
    ]


def _in_process(report: dict[str, Any]) -> list[str]:
    lines = ["**In-process limit** (decode + preprocess + trunk + N heads, compiled, batch "
             f"{report['settings']['in_process_batch']}, one process):", "",
             "| nodes | images/s | decode + preprocess | trunk | heads |", "|---:|---:|---:|---:|---:|"]
    for row in report["in_process"]:
        share = row["share"]
        lines.append(f"| {row['nodes']} | {_spread(row)} | {share['decode']:.0%} | {share['trunk']:.0%} | {share['heads']:.0%} |")
    return lines + [""]


def _network(report: dict[str, Any]) -> list[str]:
    limits = {row["nodes"]: row["images_per_s"] for row in report["in_process"]}
    lines = ["**Network** (gateway + N node processes on loopback, C closed-loop clients sending B images a request):", "",
             "| nodes | clients | batch | images/s | of the limit | p50 ms | p95 ms | p99 ms | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["network"]:
        ratio = row["images_per_s"] / limits[row["nodes"]] if limits.get(row["nodes"]) else float("nan")
        lines.append(f"| {row['nodes']} | {row['clients']} | {row['batch']} | {_spread(row)} | {ratio:.0%} | "
                     f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |")
    return lines + [""]


def _open_loop(report: dict[str, Any]) -> list[str]:
    rows = report.get("open_loop") or []
    if not rows:
        return []
    lines = [f"**Tail at the same offered load** (open loop: {rows[0]['offered_images_per_s']:g} single-image requests "
             "per second, whatever the answers do; latency from each request's scheduled send):", "",
             "| nodes | answered images/s | p50 ms | p95 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['nodes']} | {row['images_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['errors']} |")
    return lines + [""]


def _targets(report: dict[str, Any]) -> list[str]:
    lines = ["**Targets of issue 11:**", "", "| target | measured | goal | met |", "|---|---:|---:|:---:|"]
    for target in report["targets"]:
        value = f"{target['value']:.2f}"
        if "accuracy_gap" in target:
            value += f" (accuracy gap {100 * target['accuracy_gap']:+.1f} points)"
        lines.append(f"| {target['target']} | {value} | {target['goal']:g} | {'yes' if target['met'] else '**no**'} |")
    return lines + [""]


def _profile(report: dict[str, Any]) -> list[str]:
    lines = ["**Where the time goes** (per image over each point's windows: CPU milliseconds of each process from "
             "/proc, and the gateway's own stage times from `attribnet_stage_seconds`; the machine's 2 cores are "
             "shared by all processes, `busy` = their CPU over 2 cores × wall):", "",
             "| N | C | B | trunk batch | CPU gateway | CPU nodes | CPU load gen. | busy | decode | queue | trunk | nodes | respond |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["network"]:
        p = row["profile"]
        cpu, stage = p["cpu_ms_per_image"], p["stage_ms_per_image"]
        lines.append(
            f"| {row['nodes']} | {row['clients']} | {row['batch']} | {p['mean_trunk_batch']:.1f} | {cpu['gateway']:.2f} | "
            f"{cpu['nodes']:.2f} | {cpu['client']:.2f} | {p['cpu_busy']:.0%} | {stage['decode']:.2f} | {stage['queue']:.2f} | "
            f"{stage['trunk']:.2f} | {stage['nodes']:.2f} | {stage['respond']:.2f} |"
        )
    return lines + [""]


def _transfer(report: dict[str, Any]) -> list[str]:
    t = report.get("transfer")
    if not t:
        return []
    return [
        f"**Transfer** ({t['data']}, {t['image_size']} px benchmark zoo, {t.get('mode', 'pixel')} input, "
        f"{t['per_source']} images per source, "
        f"{t['test_images']} test images; the shared trunk itself took {t['trunk_train_s']:.0f} s once, "
        "on every zoo source):", "",
        "| model | training wall s | of which fit s | epochs | test accuracy | test AUC |", "|---|---:|---:|---:|---:|---:|",
        f"| head on the frozen trunk (`node.train_head`) | {t['head_train_s']:.1f} | {t['head_fit_s']:.1f} | {t['head_epochs']} "
        f"| {t['head_accuracy']:.3f} | {t['head_auc']:.3f} |",
        f"| full model from scratch (`coordinator.train_primary`) | {t['full_train_s']:.1f} | {t['full_fit_s']:.1f} | "
        f"{t['full_epochs']} | {t['full_accuracy']:.3f} | {t['full_auc']:.3f} |", "",
        _reach(t), "",
    ]


def _reach(t: dict[str, Any]) -> str:
    if t.get("head_seconds_to_target") is None:
        return (f"The head never came within 1 point of the full model's validation accuracy "
                f"({t['target_val_accuracy'] + 0.01:.3f}).")
    return (f"The head reached the full model's validation accuracy within 1 point ({t['target_val_accuracy']:.3f}) "
            f"after {t['head_epochs_to_target']} epoch(s), {t['head_seconds_to_target']:.1f} s of training: "
            f"{t['head_seconds_to_target'] / t['full_fit_s']:.0%} of the full model's {t['full_fit_s']:.1f} s.")


def render(report: dict[str, Any]) -> str:
    """The whole section, between the markers `replace_section` looks for."""
    parts = [BEGIN, "", *_header(report), *_in_process(report), *_network(report), *_open_loop(report), *_targets(report),
             *_profile(report), *_transfer(report), END]
    return "\n".join(parts) + "\n"


def replace_section(document: str, section: str) -> str:
    """`document` with its bench-serving section replaced by `section` (appended when absent)."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        return head + section.rstrip("\n") + rest.split(END, 1)[1]
    return document.rstrip("\n") + "\n\n" + section
