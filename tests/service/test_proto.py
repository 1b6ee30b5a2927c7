"""The committed generated code matches the .proto files, and imports under tessera.proto."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tessera.proto import generate

pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the code")

ROOT = generate.PROTO_ROOT
_VERSION_LINES = re.compile(r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*)$", re.M)


def _generated(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".py", ".pyi") and "_pb2" in p.name
    }


def test_generated_code_is_current(tmp_path):
    generate.generate(tmp_path)
    fresh, committed = _generated(tmp_path), _generated(ROOT)
    assert fresh, "protoc produced nothing"
    stale = sorted(set(fresh) ^ set(committed)) + [
        name
        for name in fresh
        if name in committed
        and _VERSION_LINES.sub("", fresh[name]) != _VERSION_LINES.sub("", committed[name])
    ]
    assert not stale, f"generated code is stale; run `python -m tessera.proto.generate`: {stale}"


def test_descriptor_matches_proto_file(tmp_path):
    """Independent of tool versions: the embedded descriptor equals a fresh compile of the .proto."""
    from grpc_tools import protoc

    from tessera.proto.tessera.v1 import tessera_pb2

    out = tmp_path / "set.pb"
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    assert (
        protoc.main(
            ["protoc", f"-I{ROOT}", f"-I{include}", f"--descriptor_set_out={out}", "tessera/v1/tessera.proto"]
        )
        == 0
    )
    from google.protobuf import descriptor_pb2

    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in _all_messages(fresh.message_type):
        for f in message.field:
            f.ClearField("json_name")  # descriptor sets carry json names, embedded code does not
    embedded = descriptor_pb2.FileDescriptorProto.FromString(tessera_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == embedded, (
        "tessera_pb2.py does not match tessera.proto; run `python -m tessera.proto.generate`"
    )


def _all_messages(messages):
    for m in messages:
        yield m
        yield from _all_messages(m.nested_type)


def test_generated_modules_import_under_the_namespace():
    from tessera.proto.tessera.v1 import tessera_pb2, tessera_pb2_grpc

    assert tessera_pb2.DESCRIPTOR.package == "tessera.v1"
    assert tessera_pb2_grpc.TesseraStub is not None
    text = (ROOT / "tessera/v1/tessera_pb2_grpc.py").read_text()
    assert "from tessera.proto.tessera.v1 import tessera_pb2" in text
    assert not re.search(r"^from tessera\.v1 ", text, re.M)
