"""Check embench's import contracts (``[tool.importlinter]`` in pyproject.toml).

import-linter finds a package's modules by walking the folder the package is imported from.
embench's built-in plugins live in the top-level folders ``encoders/`` and ``tasks/`` and are
installed as ``embench.encoders`` and ``embench.tasks`` (setuptools ``package-dir``), which that
walk cannot see. So this script lays the package out in a temporary folder as it is installed,
plugins inside, and runs ``lint-imports`` there. ``make lint`` runs it.

Usage: python tools/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where each folder of the repository lies in the installed package.
INSTALLED = {"embench": "embench", "encoders": "embench/encoders", "tasks": "embench/tasks"}


def stage_package(destination: Path) -> Path:
    """Copy the package's sources into ``destination`` as installed; return the package dir."""
    for source, target in INSTALLED.items():
        shutil.copytree(ROOT / source, destination / target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination / "embench"


def main(arguments: list[str]) -> int:
    """Run lint-imports on a staged copy of the package; return its exit status."""
    with tempfile.TemporaryDirectory(prefix="embench-lint-") as tmp:
        stage_package(Path(tmp))
        # run from the staged folder so that `import embench` finds the copy, not the checkout
        command = [sys.executable, "-c",
                   "import sys; from importlinter.cli import lint_imports_command; "
                   "sys.exit(lint_imports_command())",
                   str(ROOT / "pyproject.toml"), "--no-cache", *arguments]
        return subprocess.run(command, cwd=tmp, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
