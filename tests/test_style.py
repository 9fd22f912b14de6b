"""The project's own style checks: ruff's linter and formatter, width 88."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["cavra_core", "server", "plugins", "tests", "bench"]


def _ruff(*arguments: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return subprocess.run(
        [executable, *arguments, *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_code_passes_the_linter() -> None:
    """ruff check finds nothing."""
    result = _ruff("check", "--quiet")

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted() -> None:
    """ruff format would change nothing."""
    result = _ruff("format", "--check", "--quiet")

    assert result.returncode == 0, result.stdout + result.stderr
