"""Rebuild the generated protobuf/gRPC stubs in proto/meshgate/v1 from the .proto sources.

Usage: python scripts/gen_proto.py [--check]
--check regenerates into a temporary folder and exits 1 if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
PKG = PROTO / "meshgate" / "v1"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO)) for p in PKG.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = out / "meshgate" / "v1"
        names = sorted(p.name for p in fresh.iterdir() if p.name.endswith(GENERATED))
        if opts.check:
            stale = [n for n in names if not (PKG / n).exists() or not filecmp.cmp(fresh / n, PKG / n, shallow=False)]
            extra = [p.name for p in PKG.iterdir() if p.name.endswith(GENERATED) and p.name not in names]
            if stale or extra:
                print(f"stale generated stubs: {stale + extra}; run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            print(f"{len(names)} generated stubs are fresh")
            return 0
        for n in names:
            shutil.copyfile(fresh / n, PKG / n)
        print(f"wrote {len(names)} files to {PKG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
