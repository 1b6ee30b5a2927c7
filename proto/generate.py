"""Regenerate the Python gRPC code beside the .proto files (``python -m tessera.proto.generate``).

protoc (from grpcio-tools) writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``; their imports
of sibling protos (``from tessera.v1 import ...``) are rewritten to the installed namespace
(``from tessera.proto.tessera.v1 import ...``). ``tests/service/test_proto.py`` fails when the
committed code is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
NAMESPACE = "tessera.proto"
# Top-level proto packages of ours whose generated imports must be re-rooted under NAMESPACE.
OWN_PACKAGES = ("tessera",)


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.proto"))


def _rewrite_imports(text: str) -> str:
    """``from tessera.v1 import x`` -> ``from tessera.proto.tessera.v1 import x`` (and ``import`` forms)."""
    for pkg in OWN_PACKAGES:
        text = re.sub(rf"^from ({pkg}(\.\S+)?) import ", rf"from {NAMESPACE}.\1 import ", text, flags=re.M)
        text = re.sub(rf"^import ({pkg}\.\S+)", rf"import {NAMESPACE}.\1", text, flags=re.M)
    return text


def generate(out_dir: Path | None = None, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every .proto under ``root`` writing into ``out_dir`` (default: beside them)."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - dev dependency
        raise SystemExit("grpcio-tools is needed: pip install 'tessera[dev]'") from exc
    out = Path(out_dir) if out_dir is not None else root
    files = proto_files(root)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{root}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(f) for f in files],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (see the messages above)")
        written = []
        for src in sorted(Path(tmp).rglob("*")):
            if not src.is_file() or src.suffix not in (".py", ".pyi"):
                continue
            rel = src.relative_to(tmp)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite_imports(src.read_text()))
            written.append(dest)
    # Every folder on the way to generated code must be a Python package.
    for f in written:
        d = f.parent
        while d != out and d.is_relative_to(out):
            init = d / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated gRPC code (see tessera/proto/generate.py)."""\n')
            d = d.parent
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the protos)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
