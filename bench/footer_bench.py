#!/usr/bin/env python3
"""Benchmark the footer's share of a key action in limiquantix-tui (issue: the footer
rebuilt all its keys on every change of the active bindings).

The still demo app (``limiquantix.tui.demo_data``, no controller) in ``run_test(size=(120,
40))``, 12 VMs fed. Two actions, each ``--rounds`` times, CPU time (``time.process_time``)
around the action and the ``pilot.pause()`` that lets its refresh finish:

1. **bindings refresh**: ``screen.refresh_bindings()`` with nothing changed, as a focus
   change or a poll's WhoAmI does (before: every key removed and remounted, then measured).
2. **VM screen push + pop**: ``enter`` on a row, ``escape`` back (both screens' footers).

Prints the median and mean CPU ms per action. ``pilot.pause()``'s idle wait is sleep, not
CPU, so the figures are the app's work; run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from limiquantix.tui import demo_data
from limiquantix.tui.screens.fleet import FleetScreen
from limiquantix.tui.screens.vm import VMScreen


async def _measure(rounds: int) -> dict[str, list[float]]:
    app, feed = demo_data.demo_app(history=3)
    out: dict[str, list[float]] = {"bindings refresh": [], "VM screen push + pop": []}
    async with app.run_test(size=(120, 40)) as pilot:
        feed()
        await pilot.pause()
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)

        async def refresh() -> None:
            fleet.refresh_bindings()
            await pilot.pause()

        async def push_pop() -> None:
            fleet.table.move_cursor(row=8)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, VMScreen)
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is fleet

        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "bindings refresh": refresh,
            "VM screen push + pop": push_pop,
        }
        for name, action in actions.items():
            await action()  # warm: first push imports and builds the VM screen's classes
            for _ in range(rounds):
                start = time.process_time()
                await action()
                out[name].append((time.process_time() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="times each action is measured")
    args = parser.parse_args()
    for name, ms in asyncio.run(_measure(args.rounds)).items():
        print(
            f"{name:24} median {statistics.median(ms):6.1f} ms CPU   mean {statistics.mean(ms):6.1f} ms   n={len(ms)}"
        )


if __name__ == "__main__":
    main()
