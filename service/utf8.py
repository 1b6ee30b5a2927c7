"""Name the field that holds invalid UTF-8 in a request protobuf could not parse.

protobuf rejects a proto3 ``string`` with invalid UTF-8 without saying where. The bytes are parsed
again with a shadow copy of the message types in which every string is ``bytes``, and walked to find
the first string field whose bytes do not decode: ``documents[2].text``, ``documents[0].metadata["k"]``.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from tessera.proto.tessera.v1 import tessera_pb2

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES


@functools.lru_cache(maxsize=1)
def _shadow() -> tuple[descriptor_pool.DescriptorPool, frozenset, frozenset]:
    pool = descriptor_pool.DescriptorPool()
    strings: set[tuple[str, str]] = set()
    maps: set[str] = set()

    def walk(messages, prefix: str) -> None:
        for m in messages:
            name = f"{prefix}.{m.name}"
            if m.options.map_entry:
                maps.add(name)
                m.options.ClearField("map_entry")  # a plain repeated message on the wire
            for f in m.field:
                if f.type == _STRING:
                    f.type = _BYTES
                    strings.add((name, f.name))
            walk(m.nested_type, name)

    for fd in (struct_pb2.DESCRIPTOR, timestamp_pb2.DESCRIPTOR, tessera_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        walk(proto.message_type, proto.package)
        pool.Add(proto)
    return pool, frozenset(strings), frozenset(maps)


def invalid_utf8_field(full_name: str, data: bytes) -> str | None:
    """The path of the first string field of message ``full_name`` in ``data`` that is not UTF-8."""
    pool, strings, maps = _shadow()
    try:
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
        msg = cls.FromString(data)
    except (KeyError, DecodeError):
        return None
    return _find(msg, "", strings, maps)


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return field.label == field.LABEL_REPEATED  # protobuf < 5


def _bad(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _find(msg, path: str, strings: frozenset, maps: frozenset) -> str | None:
    desc = msg.DESCRIPTOR
    for field, value in msg.ListFields():
        here = f"{path}.{field.name}" if path else field.name
        rep = _repeated(field)
        is_string = (desc.full_name, field.name) in strings
        is_map = field.message_type is not None and field.message_type.full_name in maps
        for i, item in enumerate(value if rep else [value]):
            at = f"{here}[{i}]" if rep else here
            if is_string:
                if _bad(item):
                    return at
            elif is_map:
                found = _find(item, "", strings, maps)
                if found == "key":
                    return f"{here} (the key of entry {i})"
                if found:
                    key = item.key.decode("utf-8") if isinstance(item.key, bytes) else item.key
                    return f'{here}["{key}"]{found[len("value") :]}'
            elif field.message_type is not None:
                found = _find(item, at, strings, maps)
                if found:
                    return found
    return None
