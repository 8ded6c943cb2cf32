"""The layers the README promises: inference and geometry do not pull in what they do not use."""
import subprocess
import sys

import pytest


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


@pytest.mark.parametrize("module", ["depthpi.predict", "depthpi.evaluate", "depthpi.export", "depthpi.precompute",
                                   "depthpi.inference_cli"])
def test_using_a_trained_model_does_not_import_the_training_engine(module):
    leaked = {m for m in _imported_after(f"import {module}") if m.startswith("depthpi.train")}
    assert not leaked, f"{module} imports {sorted(leaked)}"


def test_geometry_is_plain_numpy():
    modules = _imported_after("import depthpi.camera, depthpi.skeleton")
    assert "torch" not in modules and "numpy" in modules
