"""The benchmark scripts are not run by the suite (figures need a quiet machine); this
catches the breakage a refactor leaves in them: every script must import and parse its
arguments."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "benchlib.py"))
def test_benchmark_script_imports_and_shows_its_options(script):
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
