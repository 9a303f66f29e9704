"""Every public module says what it exports, and exports only what exists."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import limiquantix.agent
import limiquantix.cli
import limiquantix.controller
import limiquantix.hostd
import limiquantix.protocol
import limiquantix.tui

MODULES = sorted(
    info.name
    for pkg in (
        limiquantix.agent,
        limiquantix.cli,
        limiquantix.controller,
        limiquantix.hostd,
        limiquantix.protocol,
        limiquantix.tui,
    )
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


@pytest.mark.parametrize("package", [limiquantix.hostd, limiquantix.protocol, limiquantix.tui])
def test_lazy_exports_resolve_to_the_module_that_defines_them(package: object) -> None:
    """Each name imported on first use is in ``__all__``, comes from the private module its
    table names, and that module defines it (a class or function says where it was defined):
    an export pointing at a module that re-exports it would import that module's imports too."""
    name = package.__name__  # type: ignore[attr-defined]
    lazy: dict[str, str] = package._LAZY  # type: ignore[attr-defined]
    assert set(lazy) <= set(package.__all__)  # type: ignore[attr-defined]
    for export, where in lazy.items():
        module = where.removeprefix(".")  # the tables name modules relative to their package
        assert module.startswith("_"), f"{name}.{export} is exported from a public module, {module}"
        # (agent_pb2 is a module of _gen: imported, it is an attribute of _gen like any name)
        value = importlib.import_module(f"{name}.{module}.{export}") if module == "_gen" else None
        value = value or getattr(importlib.import_module(f"{name}.{module}"), export)
        assert getattr(package, export) is value
        defined_in = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        # (another package's name, as hostd's ConfigError, is re-exported as it is)
        if (callable(value) or isinstance(value, type)) and defined_in.startswith(f"{name}."):
            assert defined_in == f"{name}.{module}", f"{name}.{export} is defined in {defined_in}, not {module}"


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_the_protocol_package_loads_nothing_else() -> None:
    """Every program imports it (the agent on every guest, ``limiquantix exec`` on every start):
    every export, the version included, is imported when asked for."""
    loaded = _loaded_after("import limiquantix.protocol")
    assert {m for m in loaded if m.startswith("limiquantix.")} == {"limiquantix.protocol"}
    assert not {"google.protobuf", "ssl", "trio", "typing", "dataclasses"} & loaded


def test_the_names_limiquantix_exec_needs_load_no_protobuf_ssl_or_dataclasses() -> None:
    """The client profile, the URL check and the command budget, as ``limiquantix exec`` uses
    them on every start (plain HTTP to loopback: no TLS)."""
    loaded = _loaded_after(
        "from limiquantix.protocol import ConfigError, check_token_transport, command_budget_s, read_config, resolve"
    )
    assert not {"google.protobuf", "ssl", "dataclasses", "argparse", "limiquantix.protocol._tls"} & loaded


def test_no_package_imports_another_packages_private_module() -> None:
    """Across packages only the public surface is used: an ``__init__``'s exports and the
    modules named without ``_`` (the generated code, ``protocol._gen``, by name). Tests,
    benchmarks and scripts may reach inside; the product's packages may not."""
    import ast
    import re
    from pathlib import Path

    def private(parts: list[str]) -> bool:
        return any(p.startswith("_") and p != "_gen" for p in parts[2:])

    root = Path(__file__).resolve().parent.parent
    found = []
    for package in ("agent", "cli", "controller", "hostd", "protocol", "tui"):
        for path in (root / package).rglob("*.py"):
            if "_gen" in path.parts:
                continue
            text = path.read_text()
            # Parsed only where such an import can be: a dotted name in the text that reaches a
            # private module (the tree is ruff-formatted: a dotted name is written without
            # spaces). Six files of the 137 are; parsing and walking them all took ~1 CPU-s.
            if not any(private(m.group().split(".")) for m in re.finditer(r"limiquantix(?:\.\w+)+", text)):
                continue
            for node in ast.walk(ast.parse(text)):
                modules = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                    else [a.name for a in node.names] if isinstance(node, ast.Import) else []
                )  # fmt: skip
                for module in modules:
                    parts = module.split(".")
                    if parts[0] != "limiquantix" or len(parts) < 3 or parts[1] == package:
                        continue
                    if private(parts):
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {module}")
    assert not found, found
