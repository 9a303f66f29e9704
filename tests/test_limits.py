"""protocol.limits: the descriptor-driven bounds of every request field."""

from __future__ import annotations

import re

import pytest
from google.protobuf.descriptor import FieldDescriptor

from limiquantix.protocol import errors, limits, new_message, varint_bytes
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


@pytest.mark.parametrize(
    "value",
    [
        "v" * limits.MAX_ID_BYTES,
        "é" * (limits.MAX_ID_BYTES // 2),  # 128 bytes of UTF-8
        "web-01",
        "ünïcode-vm",
        "a/b=c",  # libvirt allows almost anything in a domain name; only hostd's plain ids are narrower
    ],
)
def test_an_id_check_id_takes_can_be_named_in_any_request(value: str) -> None:
    """The one id rule and the requests' bound agree: whatever hostd or the controller lists
    (check_id) a request can name (check_message), so no VM is listed but unaddressable."""
    limits.check_id(value, "vm id")
    limits.check_message(api_pb.GetVMRequest(vm_id=value))
    limits.check_message(fleet_pb.RunCommandRequest(vm_ids=[value]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "vm id is empty; an id is 1-128 bytes"),
        ("v" * (limits.MAX_ID_BYTES + 1), "is 129 bytes; the limit is 128"),
        # Bytes, not characters: 100 characters, 300 bytes.
        ("€" * 100, "is 300 bytes; the limit is 128"),
        ("web 01", "must be printable, without spaces"),
        ("web\t01", "must be printable, without spaces"),
        ("web\x1b[2J", "must be printable, without spaces"),
        ("web\u2028", "must be printable, without spaces"),
        ("web\u200e", "must be printable, without spaces"),  # a format character (bidi mark)
        ("web\ud800", "must be printable, without spaces"),  # a lone surrogate
    ],
)
def test_check_id_refuses_clearly(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=re.escape(message)) as caught:
        limits.check_id(value, "vm id")
    # The refusal names the id escaped (no control reaches a terminal), and cut when long.
    assert caught.value.message.isprintable() and len(caught.value.message) < 200


def test_an_id_too_long_for_check_id_is_too_long_for_a_request() -> None:
    value = "v" * (limits.MAX_ID_BYTES + 1)
    for check in (
        lambda: limits.check_id(value, "vm id"),
        lambda: limits.check_message(api_pb.GetVMRequest(vm_id=value)),
    ):
        with pytest.raises(errors.InvalidArgument) as caught:
            check()
        assert caught.value.reason == "too_large"


@pytest.mark.parametrize("value", ["web-01", "a", "db_1.x:y@z+w", "9" * limits.MAX_ID_BYTES])
def test_plain_ids(value: str) -> None:
    limits.check_id(value, "vm id", plain=True)


@pytest.mark.parametrize("value", ["-web", ".hidden", "a/b", "ünïcode", "a=b", "9" * (limits.MAX_ID_BYTES + 1)])
def test_plain_ids_refuse_what_is_not_plain(value: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="vm id"):
        limits.check_id(value, "vm id", plain=True)


def test_check_density_walks_nested_messages_and_stops_at_the_bound() -> None:
    """limits.check_density: a body small enough passes unread; a protobuf of more fields than
    MAX_MESSAGE_FIELDS (here inside a nested message) is refused where the walk passes the
    bound; a real large request (a file's bytes: one field) passes; malformed wire is refused."""
    from limiquantix.protocol._gen import agent_pb2 as apb
    from limiquantix.protocol._gen import node_daemon_pb2 as npb

    descriptor = npb.ExecuteInGuestRequest.DESCRIPTOR
    n = limits.MAX_MESSAGE_FIELDS
    argv = apb.ExecuteRequest.DESCRIPTOR.fields_by_name["argv"].number
    inner = bytes([argv << 3 | 2, 0]) * n  # n fields, + the outer one: n + 1
    body = npb.ExecuteInGuestRequest(vm_id="v").SerializeToString() + b"\x12" + varint_bytes(len(inner)) + inner
    with pytest.raises(errors.InvalidArgument, match=f"over {n} fields"):
        limits.check_density(body, descriptor, json=False)
    limits.check_density(body[: 2 * n], descriptor, json=False)  # too small to hold more: not read
    big = npb.WriteGuestFileRequest(vm_id="v", path="/p", content=b"x" * (4 * n)).SerializeToString()
    limits.check_density(big, npb.WriteGuestFileRequest.DESCRIPTOR, json=False)
    with pytest.raises(errors.InvalidArgument, match="malformed protobuf"):
        limits.check_density(b"\x0b" * (3 * n), descriptor, json=False)
    with pytest.raises(errors.InvalidArgument, match=f"over {n} fields"):
        limits.check_density(b"[" + b"0," * n + b"0]", descriptor, json=True)
    limits.check_density(b'{"content": "' + b"QUFB" * n + b'"}', descriptor, json=True)


@pytest.mark.parametrize("step", [1, 3, 512, 10**9])
def test_a_field_walk_in_slices_counts_what_one_walk_counts(step: int) -> None:
    """limits.FieldWalk: hostd walks a guest's report a slice at a time between checkpoints;
    whatever the slice, the count is the message's fields on the wire (list entries, values,
    nested messages' fields; a packed list, a string, an unknown field: one each)."""
    report = pb.TelemetryReport(cpu_percent=1.5, per_cpu_percent=[1.0] * 100, truncated=True)
    for i in range(7):
        report.interfaces.add(name=f"eth{i}", ipv4=[pb.IpAddress(address="10.0.0.1", prefix_length=24)])
    msg = new_message("m", telemetry=report)
    data = msg.SerializeToString() + b"\xf8\x7f\x01"  # an unknown varint field (number 2047)
    # id, timestamp (+ seconds, nanos), telemetry, its cpu_percent, per_cpu (packed), truncated,
    # 7 interfaces of 4 (the entry, name, an address entry, its address) + prefix_length, the unknown.
    expected = 1 + 3 + 1 + 3 + 7 * 5 + 1
    walk = limits.FieldWalk(data, pb.AgentMessage.DESCRIPTOR)
    slices = 0
    while not walk.advance(step):
        slices += 1
        assert walk.fields == slices * step
    assert walk.done and walk.fields == expected and slices == (expected - 1) // step
    assert walk.advance(step) and walk.fields == expected  # done stays done
    cut = limits.FieldWalk(data[:-20], pb.AgentMessage.DESCRIPTOR)
    with pytest.raises(errors.InvalidArgument, match="malformed protobuf"):
        cut.advance(10**9)
