"""One typed way to start an async worker.

Textual's ``run_worker`` takes a ``WorkType`` union (a coroutine function, a plain function or an
awaitable); given a bound coroutine method or a partial of one at the call, mypy cannot choose between
the first two members and infers the result type ``Never``. Screens start their workers through
:func:`run_async`, whose parameter declares what the work is, so the one call below type-checks. The work is a function, never a coroutine object: a worker cancelled before it starts (an
exclusive one replaced in the same tick, or the app quitting) would leave a coroutine object never
awaited (tests/test_tui_workers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from textual.dom import DOMNode
from textual.worker import Worker


def run_async(
    node: DOMNode,
    work: Callable[[], Coroutine[Any, Any, None]],
    *,
    group: str = "default",
    name: str | None = "",
    exclusive: bool = False,
) -> Worker[None]:
    """``node.run_worker(work, ...)`` for an async function ``work`` (a ``functools.partial`` for arguments)."""
    return node.run_worker(work, name=name, group=group, exclusive=exclusive)
