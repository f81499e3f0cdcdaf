"""`attribnet bench soak`, short: real gateway and node processes on loopback, a node killed and the
coordinator restarted while clients send; nothing is lost and the registry ends as it began.

It soaks the suite's served tiny demo network (`--network`): trained heads, canary audits on with the
demo's own settings, so the audit and the restarts are exercised together."""

from __future__ import annotations

import json

from attribnet.cli import main


def test_a_short_soak_of_a_trained_network_loses_nothing_through_a_node_kill_and_a_coordinator_restart(
        served_demo, tmp_path, capsys):
    demo = served_demo.folder()
    code = main(["bench", "soak", "--seconds", "10", "--clients", "1", "--kill-every", "4",
                 "--network", str(demo), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "soak.json").read_text())
    assert code == 0, report
    assert report["sent"] > 5 and report["lost"] == 0 and report["failed"] == 0, report
    assert report["node_kills"] >= 1 and report["coordinator_restarts"] == 1, report
    assert report["registry_before"] == report["registry_after"] == ["nnconv_a", "tconv_a"], report
    assert report["audited"] and report["quarantined"] == {} and report["flagged"] == {}, report
    assert json.loads(capsys.readouterr().out)["sent"] == report["sent"]


def test_a_folder_that_is_no_demo_run_is_refused_in_one_line(tmp_path, capsys):
    assert main(["bench", "soak", "--seconds", "1", "--network", str(tmp_path), "--out", str(tmp_path / "soak")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "coordinator.yaml not found: --network takes the --out folder" in error, error
