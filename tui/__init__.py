"""limiquantix-tui: the operators' terminal dashboard (Textual; talks only to the controller's API).

The public surface is what this module exports, plus the modules a Textual app is read by:

* :mod:`.screens` (one module per screen) and :mod:`.widgets` (reusable widgets);
* :mod:`.state`: what the TUI knows of the fleet, plain data (no Textual);
* :mod:`.messages`: the messages the app posts to every screen;
* :mod:`.demo_data`: deterministic sample answers (snapshots, screenshots, the benchmark).

The rest is private (its name starts with ``_``): :mod:`.app` (the app: screens, the
fleet poll), :mod:`.client` (every call to the controller), :mod:`.config` (flags and the
profile file), :mod:`.jobs` (runs started here), :mod:`.format` (pure formatting helpers),
:mod:`.workers` (the one typed way to start a worker). Screens and widgets import them;
other packages import the names below. See README.md for the tree.

Every export is imported on first use: ``from limiquantix.tui.state import FleetState``
does not start Textual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limiquantix.protocol import import_lazily

if TYPE_CHECKING:  # for type checkers and readers; at run time, imported on first use
    from .app import LimiQuantixApp as LimiQuantixApp
    from .client import ApiError as ApiError
    from .client import ControllerClient as ControllerClient
    from .config import TuiConfig as TuiConfig
    from .config import api_examples_path as api_examples_path
    from .config import parse_args as parse_args
    from .format import exit_summary as exit_summary

#: Each export and the module that defines it.
_LAZY = {
    "LimiQuantixApp": ".app",
    "ApiError": ".client",
    "ControllerClient": ".client",
    "TuiConfig": ".config",
    "api_examples_path": ".config",
    "parse_args": ".config",
    "exit_summary": ".format",
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
