"""``limiquantix``: the controller's public API from a terminal or a script (click, rich).

Modules by concern: :mod:`._app` (the click group, ``exec``/``sh``, completion),
:mod:`._vms` (VMs, nodes, power, password), :mod:`._files` (``cp``, ``ls``, ``stat``),
:mod:`._fleet` (``run``), :mod:`._admin` (``audit``, ``tokens``); under them
:mod:`._client` (Connect JSON over :mod:`._http`, encoded by :mod:`._fastjson`), :mod:`._output`,
:mod:`._exitcodes`, :mod:`._options`, and :mod:`._fast`, which runs ``exec``/``sh`` without
loading click. The ``limiquantix`` program is the script ``cli/limiquantix`` (``entry()`` of
:mod:`.__main__`).

Nothing is imported here: ``limiquantix exec``'s start-up is measured (``bench/cli_bench.py``;
tests/test_cli_http.py checks what it imports).
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The ``limiquantix`` console script: the exit code (see ``limiquantix --help``)."""
    from .__main__ import main as run

    return run(argv)
