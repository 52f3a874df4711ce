"""Regenerate the gRPC Python modules from pxos.proto (``python -m hypervisor.rpc.regen``).

protoc runs with the repository root as its include path, so the generated modules import
each other as ``hypervisor.rpc.pxos_pb2``. ``--check`` regenerates into a temporary
directory and exits 1 if the committed files differ (the test suite does the same).
Needs grpcio-tools (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO = "hypervisor/rpc/pxos.proto"
GENERATED = ("pxos_pb2.py", "pxos_pb2_grpc.py", "pxos_pb2.pyi")


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc into ``out_root``; return the generated files' bytes by name."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise RuntimeError("grpcio-tools is not installed (pip install 'pxos[dev]')") from exc
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{REPO_ROOT}", f"-I{well_known}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", str(REPO_ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    out_dir = out_root / "hypervisor" / "rpc"
    return {name: (out_dir / name).read_bytes() for name in GENERATED}


def differences() -> list[str]:
    """Names of committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    return [name for name, data in fresh.items()
            if not (PACKAGE_DIR / name).exists() or (PACKAGE_DIR / name).read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hypervisor.rpc.regen", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if the files are stale")
    args = p.parse_args(argv)
    try:
        if args.check:
            stale = differences()
            for name in stale:
                print(f"{PACKAGE_DIR / name}: stale; run python -m hypervisor.rpc.regen", file=sys.stderr)
            return 1 if stale else 0
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in generate(Path(tmp)).items():
                (PACKAGE_DIR / name).write_bytes(data)
                print(f"wrote {PACKAGE_DIR / name}")
    except RuntimeError as exc:
        print(f"regen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
