"""The benchmark scripts are not run by the suite (figures need a quiet machine); this
catches the breakage a refactor leaves in them: every script must import and parse its
arguments. One interpreter runs them all (``runpy``, ``--help``), one after the other."""
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "benchlib.py")


def _help_of(script: str) -> str:
    """What ``python bench/<script> --help`` prints, run in this interpreter."""
    out = io.StringIO()
    argv, path = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = [str(BENCH / script), "--help"], [str(BENCH)]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_status:
            runpy.run_path(str(BENCH / script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    assert exit_status.value.code in (0, None), f"{script} --help exited {exit_status.value.code}"
    return out.getvalue()


def test_every_benchmark_script_imports_and_shows_its_options():
    assert len(SCRIPTS) >= 10
    failures = {}
    for script in SCRIPTS:
        try:
            text = _help_of(script)
            if "usage:" not in text:
                failures[script] = f"no usage text: {text[:200]!r}"
        except BaseException as err:  # noqa: BLE001 — report every broken script, not only the first
            failures[script] = f"{type(err).__name__}: {err}"
    assert not failures, failures


def test_sourcing_the_setup_keeps_the_callers_variables(tmp_path):
    """launch/setup_env.sh is sourced by the demo, the tests and bench/reproduce.sh: its own
    variables must not overwrite theirs (reproduce.sh's EXTRAS switch once read pip's extras).
    Run in a copy whose .venv is already stamped as installed, so nothing is installed."""
    import hashlib
    import shutil
    import subprocess

    (tmp_path / "launch").mkdir()
    shutil.copy(BENCH.parent / "launch" / "setup_env.sh", tmp_path / "launch")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stamp = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()[:16] + " dev"
    (tmp_path / ".venv" / ".depthpi-installed").write_text(stamp + "\n")
    script = ('EXTRAS=1 STAMP=mine WANT=mine; DEPTHPI_EXTRAS=dev source launch/setup_env.sh; '
              'echo "$EXTRAS|$STAMP|$WANT|${_setup_extras-unset}|${PATH%%:*}"')
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[setup] installing" not in result.stdout
    assert result.stdout.strip() == f"1|mine|mine|unset|{tmp_path / '.venv' / 'bin'}"
