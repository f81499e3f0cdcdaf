"""A Flower Deployment Engine on this machine: one SuperLink and its SuperNodes, started and stopped together.

With SuperNode authentication each SuperNode gets a fresh key whose public half is registered with
the SuperLink before it starts (`flwr supernode register`). The processes themselves are started
and watched by `flower_processes.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attribnet.launch.flower_processes import (
    CONNECTION_NAME,
    FlowerProcess,
    FlowerProcessError,
    flower_env,
    flwr_command,
    last_json,
    start_superlink,
    start_supernode,
    write_connection,
)


def write_supernode_key(path: str | Path) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format (what SuperNode authentication expects): (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.chmod(0o600)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path, public


def register_supernode(public_key: str | Path, env: Mapping[str, str], *, connection: str = CONNECTION_NAME) -> int:
    """Registers a SuperNode's public key with a SuperLink that runs `--enable-supernode-auth`; returns its node id."""
    payload = last_json(flwr_command(["supernode", "register", str(public_key), connection, "--format", "json"], env, 60.0))
    if not payload.get("success"):
        raise FlowerProcessError(f"registering SuperNode key {public_key} failed: {payload}")
    return int(payload["node-id"])


def _registered_supernode_key(folder: Path, env: Mapping[str, str]) -> str:
    """A fresh SuperNode key pair in `folder`, its public key registered with the SuperLink; the private key's path."""
    key, public = write_supernode_key(folder)
    register_supernode(public, env)
    return str(key)


def list_supernodes(env: Mapping[str, str], *, connection: str = CONNECTION_NAME) -> list[dict[str, Any]]:
    """`flwr supernode ls --format json`: node id, status (online/offline/registered), timestamps."""
    return list(last_json(flwr_command(["supernode", "ls", connection, "--format", "json"], env, 60.0)).get("nodes", []))


@dataclass
class LocalDeployment:
    """A SuperLink and SuperNodes on this machine, stopped together (a context manager)."""

    workdir: Path
    superlink_address: str = ""
    env: dict[str, str] = field(default_factory=dict)
    processes: list[FlowerProcess] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: str | Path, node_configs: Sequence[Mapping[str, Any]], *, host: str = "127.0.0.1",
              port: int | None = None, tls: tuple[str, str, str] | None = None,
              supernode_auth: bool = False) -> "LocalDeployment":
        """Starts the SuperLink (waits until it answers), then one SuperNode per node config.

        `tls` = (ca_cert, server_cert, server_key): the SuperLink serves HTTPS and every SuperNode
        and `flwr` command verifies it with the CA; otherwise everything is plaintext on loopback.
        `supernode_auth` (needs `tls`): the SuperLink admits only SuperNodes whose keys were
        registered; each SuperNode gets a fresh key under `workdir/keys`, registered before it starts.
        """
        if supernode_auth and not tls:
            raise FlowerProcessError("SuperNode authentication needs TLS (Flower refuses it on plaintext)")
        workdir = Path(workdir)
        env = flower_env(workdir / "flwr-home")
        deployment = cls(workdir=workdir, env=env)
        ca = tls[0] if tls else None
        try:
            superlink, address = start_superlink(workdir, host=host, port=port, env=env, ssl_files=tls,
                                                 enable_supernode_auth=supernode_auth)
            deployment.processes.append(superlink)
            deployment.superlink_address = address
            write_connection(workdir / "flwr-home", address, insecure=tls is None, root_certificates=ca)
            for index, node_config in enumerate(node_configs):
                name = f"supernode-{index}"
                key = _registered_supernode_key(workdir / "keys" / name, env) if supernode_auth else None
                deployment.processes.append(start_supernode(
                    address, workdir, name=name, node_config=node_config, env=env, root_certificates=ca, auth_private_key=key))
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise FlowerProcessError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}")

    def stop(self) -> None:
        """Stops SuperNodes first, then the SuperLink."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
