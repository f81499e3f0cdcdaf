"""Regenerates the protobuf/gRPC Python code beside `attribution/v1/attribution.proto`.

    python -m shared_backbone.protocol.proto.generate [--out DIR]

The .proto is compiled with `shared_backbone/protocol/proto` as its root, so its descriptor is named
`attribution/v1/attribution.proto` (what reflection clients see). protoc writes the gRPC module's
import of the messages as a top-level `attribution.v1` import; it is rewritten to the package path
so the generated code imports without touching sys.path. A test regenerates into a temp folder and
checks the committed files are identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("attribution/v1/attribution.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
PACKAGE = "shared_backbone.protocol.proto"


def generated_files(proto: str) -> list[str]:
    stem = proto[: -len(".proto")]
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(out_dir: str | Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc (grpcio-tools) for every .proto; returns the written files.

    protoc runs in a child process: inside a process that has already loaded TensorFlow's
    protobuf descriptors, grpc_tools' in-process compiler segfaults.
    """
    import grpc_tools

    out_dir = Path(out_dir)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    written: list[Path] = []
    for proto in PROTO_FILES:
        (out_dir / proto).parent.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / proto),
        ]
        completed = subprocess.run(args, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"protoc failed on {proto}: {completed.stderr.strip()}")
        module = proto[: -len(".proto")].replace("/", ".").rsplit(".", 1)[0]
        grpc_file = out_dir / (proto[: -len(".proto")] + "_pb2_grpc.py")
        text = grpc_file.read_text()
        grpc_file.write_text(text.replace(f"from {module} import", f"from {PACKAGE}.{module} import"))
        written.extend(out_dir / name for name in generated_files(proto))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(PROTO_ROOT), help="output root (default: beside the .proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
