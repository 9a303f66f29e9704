"""protocol.limits: the descriptor-driven bounds of every request field."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from limiquantix.protocol import errors, limits, new_message
from limiquantix.protocol._gen import agent_pb2 as pb
from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol._gen import vm_service_pb2 as api_pb

FILES = (pb, node_pb, api_pb, fleet_pb)


def _all_fields() -> dict[str, FieldDescriptor]:
    out: dict[str, FieldDescriptor] = {}

    def walk(desc) -> None:  # type: ignore[no-untyped-def]
        for f in desc.fields:
            out[f.full_name] = f
        for nested in desc.nested_types:
            walk(nested)

    for module in FILES:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return out


def test_every_override_names_a_field() -> None:
    fields = _all_fields()
    assert sorted(set(limits.OVERRIDES) - set(fields)) == []


def test_every_request_field_is_bounded_by_default() -> None:
    """A string, bytes or repeated field gets a bound without anyone listing it."""
    for name, field in _all_fields().items():
        if field.containing_type.GetOptions().map_entry:
            continue  # checked through its map field
        rule = limits._rule(field)
        if field.is_repeated:
            assert rule.max_items is not None and rule.max_items <= limits.MAX_TARGETS * 10, name
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            assert rule.max_bytes is not None, name


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (new_message("i" * 129, ping=pb.PingRequest()), "message_id is 129 bytes; the limit is 128"),
        (new_message(file_read=pb.FileReadRequest(path="é" * 2049)), "file_read.path is 4098 bytes; the limit is 4096"),
        (
            new_message(execute=pb.ExecuteRequest(argv=["a"], env={"E" * 257: ""})),
            "execute.env key is 257 bytes; the limit is 256",
        ),
        (
            new_message(execute=pb.ExecuteRequest(run_as=pb.RunAs(groups=range(70_000)))),
            "execute.run_as.groups is 70000 entries; the limit is 65536",
        ),
        (node_pb.ExecuteInGuestRequest(vm_id="v" * 200), "vm_id is 200 bytes; the limit is 128"),
        (
            node_pb.ExecuteInGuestRequest(request=pb.ExecuteRequest(stdin=b"s" * (limits.MAX_STDIN_BYTES + 1))),
            f"request.stdin is {limits.MAX_STDIN_BYTES + 1} bytes; the limit is {limits.MAX_STDIN_BYTES}",
        ),
        (api_pb.ListVMsRequest(labels={"k": "v" * 5000}), "labels['k'] is 5000 bytes; the limit is 4096"),
        (fleet_pb.RunCommandRequest(vm_ids=["v"] * 10_001), "vm_ids is 10001 entries; the limit is 10000"),
    ],
)
def test_oversized_fields_are_named_with_their_limit(msg, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidArgument) as info:
        limits.check_message(msg)
    assert info.value.message == message
    assert info.value.reason == "too_large"


def test_fields_within_their_bounds_pass() -> None:
    limits.check_message(
        new_message(
            "m" * limits.MAX_ID_BYTES,
            execute=pb.ExecuteRequest(
                argv=["a" * limits.MAX_ARG_BYTES] * 2,
                env={"K" * limits.MAX_NAME_BYTES: "v"},
                stdin=b"s" * limits.MAX_STDIN_BYTES,
                run_as=pb.RunAs(user="u" * limits.MAX_NAME_BYTES, groups=range(1000)),
            ),
        )
    )
    # Whole-file contents are left to hostd's and the controller's own, clearer check.
    limits.check_message(node_pb.WriteGuestFileRequest(content=b"c" * (limits.MAX_STDIN_BYTES * 2)))


def test_the_size_shortcut_is_sound() -> None:
    """A message no larger than every bound cannot hold a field over one; larger ones are looked at."""
    assert limits._SMALLEST_BOUND == limits.MAX_DIGEST_BYTES
    msg = new_message("i" * 129, ping=pb.PingRequest())
    with pytest.raises(errors.InvalidArgument):
        limits.check_message(msg, encoded_size=msg.ByteSize())


def test_clip_utf8_cuts_on_a_character_boundary() -> None:
    assert limits.clip_utf8("abc", 2) == "ab"
    assert limits.clip_utf8("é" * 10, 5) == "éé"
    assert limits.clip_utf8("short", 100) == "short"
