"""Every public module says what it exports, and exports only what exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import limiquantix.agent
import limiquantix.cli
import limiquantix.controller
import limiquantix.hostd
import limiquantix.protocol

MODULES = sorted(
    info.name
    for pkg in (limiquantix.agent, limiquantix.cli, limiquantix.controller, limiquantix.hostd, limiquantix.protocol)
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    if "._gen" not in info.name and not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return  # handler modules register themselves and export nothing
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


def test_packages_reexport_their_entry_points() -> None:
    assert limiquantix.agent.__all__ == sorted(limiquantix.agent.__all__)
    assert {"Agent", "AgentConfig", "serve"} <= set(limiquantix.agent.__all__)
    assert {"PROTOCOL_VERSION", "__version__"} <= set(limiquantix.protocol.__all__)
