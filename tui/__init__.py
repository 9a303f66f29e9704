"""limiquantix-tui: the operators' terminal dashboard (Textual; talks only to the controller's API).

The public surface is what this module exports, plus the modules a Textual app is read by:

* :mod:`.screens` (one module per screen) and :mod:`.widgets` (reusable widgets);
* :mod:`.state`: what the TUI knows of the fleet, plain data (no Textual);
* :mod:`.messages`: the messages the app posts to every screen;
* :mod:`.demo_data`: deterministic sample answers (snapshots, screenshots, the benchmark).

The rest is private (its name starts with ``_``): :mod:`._app` (the app: screens, the
fleet poll), :mod:`._client` (every call to the controller), :mod:`._config` (flags and the
profile file), :mod:`._jobs` (runs started here), :mod:`._format` (pure formatting helpers),
:mod:`._workers` (the one typed way to start a worker). Screens and widgets import them;
other packages import the names below. See README.md for the tree.

Every export is imported on first use: ``from limiquantix.tui.state import FleetState``
does not start Textual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limiquantix.protocol import import_lazily

if TYPE_CHECKING:  # for type checkers and readers; at run time, imported on first use
    from ._app import LimiQuantixApp as LimiQuantixApp
    from ._client import ApiError as ApiError
    from ._client import ControllerClient as ControllerClient
    from ._config import TuiConfig as TuiConfig
    from ._config import api_examples_path as api_examples_path
    from ._config import parse_args as parse_args
    from ._format import exit_summary as exit_summary

#: Each export and the module that defines it.
_LAZY = {
    "LimiQuantixApp": "._app",
    "ApiError": "._client",
    "ControllerClient": "._client",
    "TuiConfig": "._config",
    "api_examples_path": "._config",
    "parse_args": "._config",
    "exit_summary": "._format",
}

__all__ = [
    "ApiError",
    "ControllerClient",
    "LimiQuantixApp",
    "TuiConfig",
    "api_examples_path",
    "exit_summary",
    "parse_args",
]


def __getattr__(name: str) -> Any:
    # Not an export: AttributeError, and a submodule (``from limiquantix.tui import
    # demo_data``) is found by the import system after it.
    return import_lazily(__name__, _LAZY, name)
