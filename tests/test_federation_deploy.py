"""Flower's Deployment Engine on loopback: a real SuperLink, two SuperNodes, the app submitted by `flwr run`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from attribnet.launch import flower_deployment
from attribnet.launch import flower_processes as fp
from tests.network_support import wait_until
from tests.test_federation_sim import check_registered, coordinator_config, make_node_folders

SOURCES = ("tconv_a", "nnconv_a")


def test_deployment_over_https_with_supernode_auth_registers_the_honest_node_and_reports_the_one_that_refuses(
        zoo_reference, tiny_zoo, zoo_bundle, keypair, tmp_path):
    """`federation run --local`'s path, over HTTPS with SuperNode authentication: the honest node trains
    and registers; the other trusts another coordinator key, so it refuses the bundle; the run completes
    and says which node failed and why."""
    from attribnet.launch.flower_runs import enrol_nodes, run_local_deployment
    from shared_backbone.model.signing import generate_keypair

    _, other_public = generate_keypair(tmp_path / "other-coordinator")
    nodes = make_node_folders(tiny_zoo, tmp_path / "nodes", SOURCES, keypair)
    nodes[1]["public-key"] = str(other_public)
    config = coordinator_config(zoo_bundle, keypair, tmp_path, zoo_reference, min_nodes=len(nodes))
    started = time.monotonic()
    result = run_local_deployment(config, enrol_nodes(config, nodes), tmp_path / "deploy", timeout=150.0,
                                  tls=write_test_tls(tmp_path / "tls"), supernode_auth=True)
    print(f"TLS + SuperNode auth deployment cycle with {len(nodes)} SuperNodes: {time.monotonic() - started:.1f} s")
    assert result.flower["engine"] == "deployment" and result.flower["status"] == "finished:completed"
    assert result.status == "completed", result.error
    check_registered(result, config, nodes[:1], zoo_bundle)
    (refused,) = result.problems
    assert refused.status == "failed" and "signature does not verify" in refused.error and SOURCES[1] in refused.error
    assert not (Path(nodes[1]["state-dir"]) / "head").exists()
    logs = tmp_path / "deploy"
    assert "https://127.0.0.1" in (logs / "superlink.log").read_text() and (logs / "supernode-1.log").is_file()


def test_processes_are_gone_after_the_deployment_stops(tmp_path):
    """Process-group teardown: the SuperLink's children (superexec) go with it."""
    deployment = flower_deployment.LocalDeployment.start(tmp_path, [])
    (superlink,) = deployment.processes
    assert superlink.alive()
    deployment.stop()
    assert not superlink.alive()
    time.sleep(0.5)
    try:
        os.killpg(superlink.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "processes of the SuperLink's group survived the stop"


def write_test_tls(out: Path) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attribnet test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"]).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / "ca.pem", out / "server.pem", out / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


def test_supernode_auth_admits_only_registered_supernodes(tmp_path):
    """An unregistered SuperNode never joins: beside a registered one that does, `flwr supernode ls` lists only it."""
    tls = write_test_tls(tmp_path / "tls")
    with flower_deployment.LocalDeployment.start(tmp_path / "deploy", [{"source": "member"}], tls=tls,
                                                 supernode_auth=True) as deployment:
        intruder_key, _ = flower_deployment.write_supernode_key(tmp_path / "intruder" / "key")  # never registered
        deployment.processes.append(fp.start_supernode(
            deployment.superlink_address, tmp_path / "intruder", name="intruder", env=deployment.env,
            root_certificates=tls[0], auth_private_key=str(intruder_key), node_config={"source": "intruder"},
        ))
        wait_until(lambda: any(n["status"] == "online" for n in flower_deployment.list_supernodes(deployment.env)), 60,
                   "the registered SuperNode to come online", interval=0.5)
        intruder_log = tmp_path / "intruder" / "intruder.log"
        wait_until(lambda: "Connection attempt failed" in intruder_log.read_text(), 30, "the intruder to be refused")
        known = flower_deployment.list_supernodes(deployment.env)
    assert [n["status"] for n in known] == ["online"], known


def test_superlink_off_loopback_needs_an_explicit_control_api_acknowledgement(tmp_path, capsys):
    """flwr 1.42 serves the Control API on the Fleet port: a public --host would expose `flwr run`."""
    from attribnet.cli import main

    assert main(["federation", "superlink", "--host", "0.0.0.0", "--insecure", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Control API" in err and "--expose-control-api" in err and "/v1/fleet/" in err
