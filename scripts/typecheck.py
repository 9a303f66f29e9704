"""Run mypy over the product's packages (run by tests/test_lint.py and `make typecheck`).

The code imports itself as ``limiquantix.protocol``, ``limiquantix.agent``, ...: pyproject.toml's
``package-dir`` maps those names onto the top-level folders, and the editable install resolves
them at run time with setuptools' import-hook finder, which no static checker can follow (mypy
would report every ``limiquantix.*`` import missing and treat it as ``Any``). So this script
keeps a small link tree, ``build/typecheck/limiquantix/<package> -> ../../../<package>``
(``build/`` is git-ignored), which is the same mapping as package-dir, and pyproject.toml's
``[tool.mypy]`` puts that directory on ``mypy_path`` and names the packages to check. The
links are made here rather than committed so that ruff, pytest and setuptools never see the
tree twice, and rather than in a temp dir so that mypy's incremental cache (.mypy_cache/)
stays valid between runs.

mypy reports paths through the links; they are rewritten to the checkout's own paths
(``protocol/_framing.py:12: error: ...``) so an editor or terminal can jump to them.

    python scripts/typecheck.py [mypy arguments...]

Exits with mypy's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK_ROOT = ROOT / "build" / "typecheck"
# pyproject.toml's [tool.setuptools.package-dir], for the packages mypy checks.
PACKAGES = ("protocol", "agent", "hostd", "controller", "tui", "cli")


def make_link_tree() -> Path:
    """Create (or repair) ``build/typecheck/limiquantix/<package>`` links; return ``build/typecheck``."""
    pkg_dir = LINK_ROOT / "limiquantix"
    pkg_dir.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = pkg_dir / name
        # Relative, so that the tree stays right when the checkout moves.
        target = Path(os.path.relpath(ROOT / name, pkg_dir))
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return LINK_ROOT


def main(argv: list[str]) -> int:
    """Run mypy with pyproject.toml's configuration; return its exit status."""
    make_link_tree()
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *argv]
    out = subprocess.run(mypy, cwd=ROOT, capture_output=True, text=True)
    prefix = str(LINK_ROOT.relative_to(ROOT) / "limiquantix") + os.sep
    for stream, text in ((sys.stdout, out.stdout), (sys.stderr, out.stderr)):
        stream.write(text.replace(prefix, ""))
    return out.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
