"""``limiquantix``: the controller's public API from a terminal or a script (click, rich).

Modules by concern: :mod:`._app` (the click group, ``exec``/``sh``, completion),
:mod:`._vms` (VMs, nodes, power, password), :mod:`._files` (``cp``, ``ls``, ``stat``),
:mod:`._fleet` (``run``), :mod:`._admin` (``audit``, ``tokens``); under them
:mod:`._output`, :mod:`._exitcodes`, and the start-up path: :mod:`._fast` (the program's
entry, the option tables, exec/sh parsed without click and run up to their request leaving,
and the ``Client`` every command calls the controller with: Connect JSON over HTTP/1.1),
:mod:`._answer` (reading the answers) and :mod:`._exec` (the command followed once its
request has left). The ``limiquantix`` program is the script ``cli/limiquantix``
(``entry()`` of :mod:`._fast`; ``python -m limiquantix.cli`` runs the same).

Nothing is imported here: ``limiquantix exec``'s start-up is measured (``bench/cli_bench.py``;
tests/test_cli_http.py checks what it imports).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The ``limiquantix`` console script: the exit code (see ``limiquantix --help``)."""
    from ._fast import main as run

    return run(argv)
