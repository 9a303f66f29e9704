"""The Connect JSON decoder (rpc._codec.decode_json) beside protobuf's own json_format.Parse:
the same message for every valid input of every .proto, lone surrogates refused by name, and
string values kept out of json_format's per-character regular expression (its cost is measured
in bench/json_decode_bench.py, not here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import example_tiers
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limiquantix.protocol import errors
from limiquantix.protocol._gen import (
    admin_pb2,
    agent_pb2,
    fleet_pb2,
    grpc_reflection_v1_pb2,
    grpc_reflection_v1alpha_pb2,
    node_daemon_pb2,
    vm_service_pb2,
)
from limiquantix.protocol._gen import node_daemon_pb2 as npb
from limiquantix.protocol._gen import vm_service_pb2 as vpb
from limiquantix.protocol.rpc._codec import decode_json

FD = FieldDescriptor
MODULES = (admin_pb2, agent_pb2, fleet_pb2, grpc_reflection_v1_pb2, grpc_reflection_v1alpha_pb2, node_daemon_pb2)
MODULES += (vm_service_pb2,)


def _types(desc: Descriptor) -> Iterator[Descriptor]:
    if desc.GetOptions().map_entry:
        return
    yield desc
    for nested in desc.nested_types:
        yield from _types(nested)


#: Every message type of every .proto (nested ones included, map entries not).
MESSAGE_TYPES: list[type[Message]] = [
    message_factory.GetMessageClass(d)
    for module in MODULES
    for top in module.DESCRIPTOR.message_types_by_name.values()
    for d in _types(top)
]

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
# Text as clients send it: ASCII, accents, CJK, emoji (astral: a surrogate pair in UTF-16
# and in a \u escape). hypothesis' text never holds a lone surrogate.
_TEXT = st.text(max_size=12) | st.text(alphabet='aé中😀\x00\n"\\', max_size=12)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_STRING:
        return _TEXT
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=12)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if field.type == FD.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False)
    if field.type == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values])
    low, high = _INT_RANGES[field.type]
    return st.integers(low, high) | st.sampled_from([low, high, 0])


@st.composite
def messages(draw: st.DrawFn, cls: type[Message], depth: int = 0) -> Message:
    """A message of ``cls`` with a random subset of its fields set (nested to depth 3)."""
    msg = cls()
    if cls.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        msg.seconds = draw(st.integers(0, 253402300799))  # type: ignore[attr-defined]
        msg.nanos = draw(st.integers(0, 999_999_999))  # type: ignore[attr-defined]
        return msg
    for field in cls.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(msg, field.name)
        sub = message_factory.GetMessageClass(field.message_type) if field.message_type is not None else None
        if sub is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            keys = draw(st.lists(_scalar(key_field), max_size=3, unique=True))
            for key in keys:
                if value_field.message_type is not None:
                    if depth < 3:
                        value_cls = message_factory.GetMessageClass(value_field.message_type)
                        target[key].CopyFrom(draw(messages(value_cls, depth + 1)))
                else:
                    target[key] = draw(_scalar(value_field))
        elif sub is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                for item in draw(st.lists(messages(sub, depth + 1), max_size=3)):
                    target.add().CopyFrom(item)
            else:
                target.CopyFrom(draw(messages(sub, depth + 1)))
                if not target.ListFields():
                    getattr(msg, field.name).SetInParent()
        elif field.is_repeated:
            target.extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


@example_tiers(120, 600)
def test_every_message_of_every_proto_decodes_as_json_format_parses_it(examples: int) -> None:
    """Generated messages of every type (120 in the fast tier, 600 in the slow one: ~4 s)."""
    settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )(given(st.data())(_decodes_as_json_format_parses_it))()


def _decodes_as_json_format_parses_it(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(MESSAGE_TYPES), label="type")
    msg = data.draw(messages(cls), label="message")
    text = json_format.MessageToJson(
        msg,
        preserving_proto_field_name=data.draw(st.booleans(), label="proto names"),
        always_print_fields_with_no_presence=data.draw(st.booleans(), label="defaults"),
        ensure_ascii=data.draw(st.booleans(), label="ascii"),
    )
    expected = json_format.Parse(text, cls(), ignore_unknown_fields=True)
    got = decode_json(text.encode(), cls)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    # Presence (optional fields, oneofs, empty messages) is part of the message too.
    assert [f.name for f, _ in got.ListFields()] == [f.name for f, _ in expected.ListFields()]


def test_every_proto_is_covered() -> None:
    names = {cls.DESCRIPTOR.full_name for cls in MESSAGE_TYPES}
    assert {"limiquantix.compute.v1.ExecuteScriptRequest", "limiquantix.agent.v1.AgentMessage"} <= names
    assert "grpc.reflection.v1.ServerReflectionRequest" in names
    assert len(names) == len(MESSAGE_TYPES) > 100


# ---------------------------------------------------------------- surrogates


def _both(body: str, cls: type[Message]) -> tuple[Message | Exception, Message | Exception]:
    """(decode_json's answer, json_format.Parse's answer): a message or the exception."""
    answers: list[Message | Exception] = []
    for parse in (lambda: decode_json(body.encode(), cls), lambda: json_format.Parse(body, cls(), True)):
        try:
            answers.append(parse())
        except (errors.InvalidArgument, json_format.ParseError) as exc:
            answers.append(exc)
    return answers[0], answers[1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (r'{"command": "echo \ud83d"}', "command"),  # a high surrogate alone
        (r'{"command": "\ude00 at the start"}', "command"),  # a low one alone
        (r'{"command": "\ude00\ud83d"}', "command"),  # a pair the wrong way round
        (r'{"command": "\ud83d\ud83d\ude00"}', "command"),  # two highs, then a low: the first is lone
        (r'{"args": ["ok", "\ud83d", "\ude00"]}', "args[1]"),  # a pair split across two strings
        (r'{"environment": {"K": "\ud83d"}}', "environment['K']"),
        (r'{"environment": {"\ud83d": "v"}}', "environment key"),
        (r'{"environment": {"\ud83d": "\ude00"}}', "environment key"),  # split across key and value
        (r'{"vmId": "vm-1", "workingDirectory": "/tmp/\udfff"}', "workingDirectory"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(body: str, field: str) -> None:
    got, theirs = _both(body, vpb.ExecuteScriptRequest)
    assert isinstance(theirs, json_format.ParseError) and "surrogate" in str(theirs)  # the claim checked
    assert isinstance(got, errors.InvalidArgument), got
    assert str(got).startswith(f"{field} ") and "lone UTF-16 surrogate" in str(got)


def test_lone_surrogate_in_a_nested_message_is_named_by_its_path() -> None:
    body = r'{"vmId": "vm-1", "request": {"argv": ["/bin/echo", "x\udbffy"]}}'
    with pytest.raises(
        errors.InvalidArgument, match=r"^request\.argv\[1\] is not valid text: .*\(\\udbff\) at character 1;"
    ):
        decode_json(body.encode(), npb.ExecuteInGuestRequest)


@pytest.mark.parametrize(
    "body",
    [
        r'{"command": "\ud83d\ude00"}',  # an escaped pair: one astral character
        '{"command": "\U0001f600 raw"}',  # the same, as UTF-8
        r'{"command": "\ud83d\ude00\ud83d\ude00", "args": ["\udbff\udfff"]}',
        r'{"command": "\ud7ff\ue000"}',  # just outside the surrogate range
    ],
)
def test_surrogate_pairs_are_text(body: str) -> None:
    got, theirs = _both(body, vpb.ExecuteScriptRequest)
    assert isinstance(got, Message) and got == theirs
    assert "\U0001f600" in got.command or "\ud7ff" in got.command  # type: ignore[attr-defined]


_CODE_POINTS = st.sampled_from(["a", "é", "\U0001f600", "\ud83d", "\ude00", "\udbff", "\udc00", "\ud7ff", "\ue000"])


@example_tiers(100, 200)
def test_refused_exactly_where_json_format_refuses(examples: int) -> None:
    """Any mix of surrogates (escaped in JSON) and other characters, in a singular field,
    repeated items and map values: accepted with the same value, or refused, by both (100
    examples in the fast tier, 200 in the slow one: 300 in make test, as before the tiers)."""
    settings(max_examples=examples)(
        given(st.lists(st.lists(_CODE_POINTS, max_size=6).map("".join), min_size=1, max_size=3), st.booleans())(
            _refused_exactly_where_json_format_refuses
        )
    )()


def _refused_exactly_where_json_format_refuses(strings: list[str], ascii_only: bool) -> None:
    body = json.dumps(
        {"command": strings[0], "args": strings, "environment": {f"k{i}": s for i, s in enumerate(strings)}},
        ensure_ascii=ascii_only,
    )
    # UTF-8 cannot carry a surrogate: in JSON it is always a \u escape.
    body = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", body)
    got, theirs = _both(body, vpb.ExecuteScriptRequest)
    if isinstance(theirs, Exception):
        assert isinstance(got, errors.InvalidArgument) and "lone UTF-16 surrogate" in str(got)
    else:
        assert got == theirs


# ---------------------------------------------------------------- strings out of json_format's way


class _SpyPattern:
    """Stands in for json_format's lone-surrogate pattern (a private global, replaced for this
    test only: it is how to see what json_format scans without timing it)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.scanned = 0

    def search(self, value: str) -> Any:
        self.scanned += len(value)
        return self.real.search(value)


@pytest.fixture(name="spy")
def _spy(monkeypatch: pytest.MonkeyPatch) -> _SpyPattern:
    spy = _SpyPattern(json_format._UNPAIRED_SURROGATE_PATTERN)
    monkeypatch.setattr(json_format, "_UNPAIRED_SURROGATE_PATTERN", spy)
    return spy


BIG = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ({"vmId": "vm-1", "command": "a" * BIG}, lambda m: len(m.command) == BIG),
        ({"vmId": "vm-1", "command": "é" * (BIG // 2)}, lambda m: m.command == "é" * (BIG // 2)),
        ({"args": ["a" * 1024] * (BIG // 1024)}, lambda m: len(m.args) == BIG // 1024),
        ({"args": ["b"] * (BIG // 8)}, lambda m: len(m.args) == BIG // 8 and m.args[-1] == "b"),
        (
            {"environment": {f"K{i}": "v" * 1024 for i in range(BIG // 1024)}},
            lambda m: len(m.environment) == BIG // 1024,
        ),
    ],
    ids=["one-16MiB-string", "one-non-ASCII-string", "1KiB-args", "tiny-args", "env-1KiB-values"],
)
def test_large_strings_are_set_without_json_formats_scan(body: dict[str, Any], check: Any, spy: _SpyPattern) -> None:
    msg = decode_json(bytearray(json.dumps(body, ensure_ascii=False).encode()), vpb.ExecuteScriptRequest)
    assert check(msg)
    assert spy.scanned == 0  # every string json_format saw was a placeholder: ""


def test_strings_in_nested_repeated_and_oneof_fields_are_set_after_parsing(spy: _SpyPattern) -> None:
    long = "x" * 100_000
    body = {
        "message_id": long,  # the oneof member below: reached through it
        "execute": {"argv": [long, "é"], "env": {"K": long}, "runAs": {"user": long, "groups": [1, 2]}},
    }
    msg = decode_json(json.dumps(body).encode(), agent_pb2.AgentMessage)
    page = {"vms": [{"vmId": long, "agent": {"ipAddresses": [long]}}, {"vmId": "b", "labels": {"k": long}}]}
    vms = decode_json(json.dumps(page).encode(), npb.ListVMsResponse)
    assert spy.scanned == 0  # (json_format's own parses below scan)
    assert msg == json_format.ParseDict(body, agent_pb2.AgentMessage())
    assert msg.WhichOneof("payload") == "execute"
    assert vms == json_format.ParseDict(page, npb.ListVMsResponse())
    # A string member of a oneof: set (empty or not), and one member only, as json_format has it.
    for text in (long, ""):
        event = decode_json(json.dumps({"executionId": text}).encode(), vpb.ExecuteScriptEvent)
        assert event.WhichOneof("event") == "execution_id" and event.execution_id == text
    with pytest.raises(json_format.ParseError, match='multiple "event" oneof fields'):
        decode_json(json.dumps({"executionId": long, "output": {}}).encode(), vpb.ExecuteScriptEvent)


def test_a_field_spelled_twice_is_refused() -> None:
    """json_format takes both spellings in an order-dependent way; protojson refuses them."""
    body = b'{"vmId": "vm-1", "args": ["a"], "vm_id": "vm-2"}'
    with pytest.raises(errors.InvalidArgument, match=r"^vmId is given twice, as 'vmId' and 'vm_id'"):
        decode_json(body, vpb.ExecuteScriptRequest)
    body = b'{"request": {"argv": ["a"], "argv": ["b"]}}'  # one spelling twice: a duplicate key
    with pytest.raises(json_format.ParseError, match="duplicate key 'argv'"):
        decode_json(body, npb.ExecuteInGuestRequest)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"args": ["a", null]}', r"^args\[1\] is null, not a string"),
        (b'{"args": ["a", "b", 3]}', r"^args\[2\] is int, not a string"),
        (b'{"environment": {"A": "x", "B": ["y"]}}', r"^environment\['B'\] is list, not a string"),
    ],
)
def test_repeated_strings_and_string_maps_hold_strings_only(body: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        decode_json(body, vpb.ExecuteScriptRequest)
    with pytest.raises(json_format.ParseError):  # json_format refuses them too
        json_format.Parse(body, vpb.ExecuteScriptRequest())


def test_a_singular_string_of_another_type_is_left_to_json_format() -> None:
    with pytest.raises(json_format.ParseError, match="command"):
        decode_json(b'{"command": 5}', vpb.ExecuteScriptRequest)


@pytest.mark.parametrize(
    "groups",
    [[1, 2, 3], [1, 2.0, "3", "4e0", "-0", "+5", "0006"], [], [4294967295]],
    ids=["numbers", "proto3-json-forms", "empty", "max"],
)
def test_repeated_integers_are_taken_as_json_format_takes_them(groups: list[Any], spy: _SpyPattern) -> None:
    body = json.dumps({"request": {"argv": ["id"], "runAs": {"user": "u", "groups": groups}}})
    got, theirs = _both(body, npb.ExecuteInGuestRequest)
    assert isinstance(theirs, Message) and got == theirs


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([1, 1.5], r"groups\[1\]: Couldn't parse integer: 1.5"),
        ([True], r"groups\[0\]: Bool value True is not acceptable"),
        (["1 2"], r'groups\[0\]: Couldn\'t parse integer: "1 2"'),
        (["2.5"], r"groups\[0\]: Couldn't parse non-integer string"),
        (["x"], r"groups\[0\]: invalid literal"),
        ([1, None], r"groups\[1\]: NoneType is not an integer"),
        ([4294967296], r"request\.runAs\.groups field: Value out of range: 4294967296"),
        ([-1, "7"], r"request\.runAs\.groups field: Value out of range: -1"),
    ],
)
def test_repeated_integers_json_format_refuses_are_refused_naming_the_item(groups: list[Any], message: str) -> None:
    body = json.dumps({"request": {"runAs": {"groups": groups}}})
    got, theirs = _both(body, npb.ExecuteInGuestRequest)
    assert isinstance(theirs, json_format.ParseError)
    assert isinstance(got, json_format.ParseError) and re.search(message, str(got)), got


_B64_REFERENCE = re.compile(r"[A-Za-z0-9+/_-]*(?:={1,2})?")  # the rule as a regular expression


@example_tiers(100, 200)
def test_bytes_are_refused_unless_strict_base64(examples: int) -> None:
    """Strict base64 or refused, as the reference expression says (100 examples in the fast
    tier, 200 in the slow one: 300 in make test, as before the tiers)."""
    settings(max_examples=examples)(
        given(st.text(alphabet="AZaz09+/_-=é \n.", max_size=10))(_strict_base64_or_refused)
    )()


def _strict_base64_or_refused(value: str) -> None:
    padded_ok = len(value) % 4 == 0 if value.endswith("=") else len(value) % 4 != 1
    body = json.dumps({"content": value}).encode()
    if _B64_REFERENCE.fullmatch(value) and padded_ok:
        assert decode_json(body, vpb.WriteGuestFileRequest) == json_format.Parse(body, vpb.WriteGuestFileRequest())
    else:
        with pytest.raises(errors.InvalidArgument, match="^content is not base64"):
            decode_json(body, vpb.WriteGuestFileRequest)
