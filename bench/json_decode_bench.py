#!/usr/bin/env python3
"""CPU of the Connect JSON request decode (rpc._codec.decode_json) against json.loads alone.

Any caller can send the controller or hostd a JSON body up to the size limit (64 MiB) before a
single field limit is checked, so the decode must cost about what reading the JSON costs,
whatever the body holds. Each payload (``--size-mib`` of it, default 16) is decoded three ways
in this process, CPU time (``time.process_time``) best of ``--reps``:

* json.loads: the baseline, the floor any JSON decode pays;
* decode_json: ours (target: at most 5x json.loads);
* json_format.Parse: protobuf's own parser (what decode_json ran on before it kept strings out
  of json_format's way), for the record.

A payload that is refused (a lone surrogate, a refused field) is timed to its refusal. See
bench/README.md.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Figure, bench_parser, output_path, print_table, write_figures  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from limiquantix.protocol._gen import node_daemon_pb2 as npb  # noqa: E402
from limiquantix.protocol._gen import vm_service_pb2 as vpb  # noqa: E402
from limiquantix.protocol.rpc._codec import decode_json  # noqa: E402

MiB = 1024 * 1024


def payloads(size: int) -> list[tuple[str, type[Message], bytes]]:
    """(name, request type, body) of about ``size`` bytes each."""
    ex = vpb.ExecuteScriptRequest

    def body(obj: Any, *, ascii_only: bool = False) -> bytes:
        return json.dumps(obj, ensure_ascii=ascii_only).encode()

    return [
        ("command: one ASCII string", ex, body({"vmId": "vm-1", "command": "a" * size})),
        ("command: one non-ASCII string (é, UTF-8)", ex, body({"vmId": "vm-1", "command": "é" * (size // 2)})),
        ("command: escaped é (\\u00e9)", ex, body({"vmId": "vm-1", "command": "é" * (size // 6)}, ascii_only=True)),
        ("command: escaped pairs (emoji)", ex, body({"command": "\U0001f600" * (size // 12)}, ascii_only=True)),
        ("command: a lone surrogate at the end", ex, body({"command": "a" * size})[:-2] + b'\\ud800"}'),
        ("path (WriteGuestFile): one string", vpb.WriteGuestFileRequest, body({"path": "/" + "d" * size})),
        ("args: 1 KiB strings", ex, body({"args": ["a" * 1024] * (size // 1030)})),
        ("args: one-letter strings", ex, body({"args": ["a"] * (size // 5)})),
        ("environment: 1 KiB values", ex, body({"environment": {f"K{i}": "v" * 1024 for i in range(size // 1040)}})),
        ("environment: tiny entries", ex, body({"environment": {f"K{i}": "" for i in range(size // 13)}})),
        ("content (bytes): base64", vpb.WriteGuestFileRequest, body({"content": "QUFB" * (size // 4)})),
        (
            "run_as.groups: small numbers",
            npb.ExecuteInGuestRequest,
            body({"request": {"runAs": {"groups": [7] * (size // 3)}}}),
        ),
        (
            'run_as.groups: numbers as strings ("7")',
            npb.ExecuteInGuestRequest,
            body({"request": {"runAs": {"groups": ["7"] * (size // 5)}}}),
        ),
    ]


def cpu(fn: Callable[[], object], reps: int) -> float:
    """Best CPU seconds of ``reps`` runs of ``fn`` (a refusal counts: it is what the server pays)."""
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        try:
            fn()
        except Exception:  # the refused payloads: timed to their refusal
            pass
        best = min(best, time.process_time() - start)
    return best


def main() -> int:
    parser = bench_parser(__doc__, "json_decode", "4 MiB payloads, one repetition", keep_workdir=False)
    parser.add_argument("--size-mib", type=float, default=16.0, help="size of each payload (default 16)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, best kept (default 3)")
    parser.add_argument("--skip-json-format", action="store_true", help="do not time json_format.Parse (slow)")
    ns = parser.parse_args()
    size = int((4 if ns.quick else ns.size_mib) * MiB)
    reps = 1 if ns.quick else ns.reps
    figures: list[Figure] = []
    for name, cls, data in payloads(size):
        loads = cpu(lambda data=data: json.loads(data), reps)  # type: ignore[misc]
        ours = cpu(lambda data=data, cls=cls: decode_json(bytearray(data), cls), reps)  # type: ignore[misc]
        note = f"{len(data) / MiB:.1f} MiB"
        if not ns.skip_json_format:
            theirs = cpu(lambda data=data, cls=cls: json_format.Parse(data, cls(), True), 1)  # type: ignore[misc]
            note += f"; json_format.Parse {theirs:.3f} s ({theirs / loads:.0f}x json.loads)"
        figures.append(Figure(name, ours, loads, "s CPU", "ratio <= 5", note=note).evaluate())
        print(f"{name}: {note}", file=sys.stderr, flush=True)
    print_table(figures, "Connect JSON decode: decode_json vs json.loads", f"payloads of {size / MiB:.0f} MiB")
    write_figures(figures, output_path("json_decode", ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
