"""depthpi export: torch.export / TorchScript / ONNX models that match PyTorch and load without depthpi."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from depthpi.export import export_model, missing_onnx_packages
from depthpi.data.batches import Inputs
from depthpi.predict import Predictor
from test_predict import cli, make_run

SIZE = 65

# Run in a fresh interpreter in which importing depthpi fails: the export must not need it.
NO_DEPTHPI = "import sys; sys.modules['depthpi'] = None\n"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.from_checkpoint(make_run(tmp_path_factory.mktemp("run"), SIZE))


def _run_without_depthpi(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", NO_DEPTHPI + code], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _reference(predictor: Predictor, tmp_path: Path) -> np.ndarray:
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    return predictor.predict_inputs(Inputs(x)).numpy()


def _predict_without_depthpi(load_model: str, cwd: Path) -> np.ndarray:
    """Joints for ``x.npy`` from a model that ``load_model`` (an expression) loads in a fresh interpreter."""
    out = _run_without_depthpi(
        "import numpy as np, torch\n"
        f"model = {load_model}\n"
        "with torch.no_grad():\n"
        "    np.save('y.npy', model(torch.from_numpy(np.load('x.npy'))).numpy())\n", cwd)
    assert out == ""
    return np.load(cwd / "y.npy")


def test_torchscript_matches_pytorch_and_loads_without_depthpi(predictor, tmp_path):
    report = export_model(predictor, "torchscript", tmp_path / "model.pt")
    assert report.max_abs_diff < 1e-4
    expected = _reference(predictor, tmp_path)
    got = _predict_without_depthpi("torch.jit.load('model.pt').eval()", tmp_path)
    assert got.shape == (4, 17, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    description = json.loads((tmp_path / "model.pt.json").read_text())
    assert description["input"]["shape"] == ["B", 3, SIZE, SIZE] and description["skeleton"] == "h36m_17"
    # the README snippet runs as printed
    _run_without_depthpi(report.snippet, tmp_path)


def test_pt2_matches_pytorch_at_any_batch_and_loads_without_depthpi(predictor, tmp_path):
    report = export_model(predictor, "pt2", tmp_path / "model.pt2")
    assert report.max_abs_diff < 1e-4
    expected = _reference(predictor, tmp_path)
    # traced at batch 2; batch 4 here and batch 1 in the snippet: the batch axis is dynamic
    got = _predict_without_depthpi("torch.export.load('model.pt2').module()", tmp_path)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert json.loads((tmp_path / "model.pt2.json").read_text())["format"] == "pt2"
    _run_without_depthpi(report.snippet, tmp_path)


@pytest.mark.skipif(bool(missing_onnx_packages()), reason=f"ONNX packages missing: {missing_onnx_packages()}")
def test_onnx_matches_pytorch_and_loads_with_onnxruntime_only(predictor, tmp_path):
    report = export_model(predictor, "onnx", tmp_path / "model.onnx")
    # ONNX Runtime's convolution kernels round differently from PyTorch's; through a
    # ResNet-50 and a 2 m soft-argmax cube that is ~1e-4 mm on outputs of ~500 mm (1e-7 relative).
    assert report.max_abs_diff < 1e-2
    expected = _reference(predictor, tmp_path)
    _run_without_depthpi(
        "import numpy as np, onnxruntime as ort\n"
        "session = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])\n"
        "np.save('y.npy', session.run(None, {'image': np.load('x.npy')})[0])\n", tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-2)
    _run_without_depthpi(report.snippet, tmp_path)


def test_onnx_without_packages_names_them(predictor, tmp_path, monkeypatch):
    import depthpi.export as export

    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install onnx onnxscript onnxruntime"):
        export_model(predictor, "onnx", tmp_path / "model.onnx")


def test_bad_requests_fail_with_a_message(predictor, tmp_path):
    with pytest.raises(ValueError, match="--size 64"):
        export_model(predictor, "torchscript", tmp_path / "m.pt", size=64)
    with pytest.raises(ValueError, match="--format"):
        export_model(predictor, "tflite", tmp_path / "m.pt")
    teacher = Predictor.from_checkpoint(make_run(tmp_path / "teacher", SIZE, kind="teacher"))
    with pytest.raises(ValueError, match="depth"):
        export_model(teacher, "torchscript", tmp_path / "m.pt")


def test_export_cli_prints_check_and_snippet(predictor, tmp_path, capsys):
    ckpt = make_run(tmp_path / "run", SIZE)
    func, args = cli(["export", "--ckpt", str(ckpt), "--format", "torchscript", "--size", "129",
                      "--out", str(tmp_path / "m129.pt")])
    func(args)
    captured = capsys.readouterr()
    printed = captured.out
    assert "max |diff|" in printed and "torch.jit.load" in printed and "129, 129" in printed
    assert f"--size 129, but the model was trained on {SIZE}" in captured.err
    assert (tmp_path / "m129.pt").is_file()
    # without --format: torch.export, the format PyTorch recommends
    func, args = cli(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.pt2"), "--no-check"])
    assert args.format == "pt2"
    func(args)
    captured = capsys.readouterr()
    assert "torch.export.load" in captured.out and (tmp_path / "m.pt2").is_file()
    assert "trained on" not in captured.err  # the trained size: nothing to note
