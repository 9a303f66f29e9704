"""Regenerate protocol/_gen/ from protocol/*.proto (run by `make proto`).

Uses the protoc bundled with grpcio-tools (pinned in pyproject.toml so the output
is reproducible). protoc writes absolute imports (`import agent_pb2`) for
cross-file references; they are rewritten to relative ones so the generated
modules live inside the `limiquantix.protocol._gen` package.

    python scripts/gen_proto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocol"
GEN_DIR = PROTO_DIR / "_gen"

_IMPORT_RE = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)

_INIT = '"""Generated protobuf modules: do not edit; run `make proto`."""\n'


def generate(out: Path) -> None:
    """Write every generated module for protocol/*.proto into ``out``."""
    import grpc_tools
    from grpc_tools import protoc  # type: ignore[import-untyped]

    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "protoc",
                f"-I{PROTO_DIR}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                *protos,
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*_pb2.py*"):
            old.unlink()
        for produced in sorted(Path(tmp).iterdir()):
            text = produced.read_text()
            text = _IMPORT_RE.sub(r"from . import \1 as \2", text)
            (out / produced.name).write_text(text)
    (out / "__init__.py").write_text(_INIT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GEN_DIR)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
