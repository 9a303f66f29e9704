"""Exports imported on first use (PEP 562), for the packages whose whole import costs more
than most of their users need: ``limiquantix.protocol`` (protobuf, for the CLI's start-up),
``limiquantix.hostd`` and ``limiquantix.controller`` (the web stack, for the simulated VM,
the hostile guest and the ``token`` commands)."""

from __future__ import annotations

# Names for type checkers only, and importlib imported where a name is asked for: typing,
# collections and importlib (with warnings) would cost the CLI's measured start-up (it
# imports this module through limiquantix.protocol; tests/test_cli_http.py checks).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["import_lazily"]


def import_lazily(package: str, where: Mapping[str, str], name: str) -> Any:
    """What a package's ``__getattr__`` answers for ``name``: imported from the module
    ``where[name]`` names (relative to ``package``), or that module's submodule ``name``.

    Raises:
        AttributeError: ``name`` is not one of ``where``'s (as for any missing attribute).
    """
    module = where.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    # __import__, not importlib: limiquantix exec asks for names at every start (ConfigError,
    # resolve), and a bare interpreter has not loaded importlib (tests/test_cli_http.py). A
    # non-empty fromlist returns the module itself, and imports ``name`` from it when it is
    # a submodule its package does not import itself (protocol._gen's agent_pb2).
    target = package + module if module.startswith(".") else module
    return getattr(__import__(target, fromlist=(name,)), name)
