#!/usr/bin/env python3
"""Export the README's TUI screenshots: ``docs/tui-fleet.svg`` and ``docs/tui-vm.svg``.

The app runs headless at 120x30 with the deterministic sample data of
``limiquantix.tui.demo_data`` (no controller, a fixed clock), as the snapshot
tests do, so a rerun gives the same files unless the UI changed::

    .venv/bin/python scripts/tui_screenshot.py [--out-dir docs] [--size 120x30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from limiquantix.tui import LimiQuantixApp, demo_data
from limiquantix.tui.screens.vm import VMScreen
from limiquantix.tui.widgets.fleet_table import FleetTable

REPO = Path(__file__).resolve().parent.parent


async def _still(pilot: Pilot[None], app: LimiQuantixApp) -> None:
    """No blinking cursor, no toasts (as the snapshot tests)."""
    await pilot.pause()
    for widget in app.screen.query("Input, TextArea"):
        assert isinstance(widget, (Input, TextArea))
        widget.cursor_blink = False
    app.clear_notifications()
    await pilot.pause()


async def shoot(out_dir: Path, size: tuple[int, int]) -> list[Path]:
    """Both screenshots; returns the files written."""
    app, feed = demo_data.demo_app()
    written = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        feed()
        # the fleet sorted by CPU, highest first; the 2nd and 3rd selected, the cursor on the busiest
        await pilot.press(*["s"] * 6, "S")
        app.screen.query_one(FleetTable).move_cursor(row=0, animate=False)
        await pilot.press("down", "space", "space", *["up"] * 3)
        await _still(pilot, app)
        written.append(Path(app.save_screenshot("tui-fleet.svg", str(out_dir))))

        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, VMScreen)
        index = next(i for i, vm in enumerate(demo_data.fleet()) if vm.vm_id == screen.vm_id)
        for step in range(30):
            screen.show(demo_data.vm_detail(index, step))
        await pilot.pause()
        await _still(pilot, app)
        written.append(Path(app.save_screenshot("tui-vm.svg", str(out_dir))))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    parser.add_argument("--size", default="120x30", help="COLUMNSxROWS (default 120x30: every fleet column)")
    ns = parser.parse_args(argv)
    columns, _, rows = ns.size.partition("x")
    ns.out_dir.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(shoot(ns.out_dir, (int(columns), int(rows)))):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
