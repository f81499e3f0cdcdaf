"""`attribnet bench soak`, short: real gateway and node processes on loopback, a node killed and the
coordinator restarted while clients send; nothing is lost and the registry ends as it began."""

from __future__ import annotations

import json

from attribnet.cli import main


def test_a_short_soak_loses_nothing_through_a_node_kill_and_a_coordinator_restart(tmp_path, capsys):
    code = main(["bench", "soak", "--seconds", "16", "--nodes", "2", "--clients", "1", "--kill-every", "6",
                 "--out", str(tmp_path)])
    report = json.loads((tmp_path / "soak.json").read_text())
    assert code == 0, report
    assert report["sent"] > 5 and report["lost"] == 0 and report["failed"] == 0, report
    assert report["node_kills"] >= 1 and report["coordinator_restarts"] == 1, report
    assert report["registry_before"] == report["registry_after"] and len(report["registry_before"]) == 2
    assert json.loads(capsys.readouterr().out)["sent"] == report["sent"]
