"""Static checks of the whole tree: no unused imports or names, no undefined names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_is_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "pyflakes", "operator", "tests", "hack"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
