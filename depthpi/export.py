"""``depthpi export``: an inference-only model that runs without depthpi installed.

The exported model maps an RGB crop (B, 3, N, N) float32 in [0, 1] (the crop
``depthpi.predict.make_crop`` builds) to (B, J, 3) float32 root-relative joints in mm in
the crop camera's frame; ImageNet normalisation is part of the model. The batch axis is
dynamic, N fixed. A JSON file beside the export records input, output and skeleton.
Formats: ``pt2`` (``torch.export``), ``torchscript`` and ``onnx``; every export is checked
against ``Predictor.predict`` on random inputs.

docs/predict.md ("depthpi export") has the formats and what each needs.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from depthpi.data.batches import Inputs
from depthpi.io import atomic_path, atomic_write_json
from depthpi.models.posenet import IMAGENET_MEAN, IMAGENET_STD
from depthpi.predict import Predictor

FORMATS = ("pt2", "torchscript", "onnx")
INPUT_NAME, OUTPUT_NAME = "image", "joints"

SNIPPETS = {
    "pt2": """import torch
model = torch.export.load("{path}").module()
x = torch.rand(1, 3, {size}, {size})  # RGB crop in [0, 1], N = {size}
with torch.no_grad():
    joints = model(x)  # (1, {joints}, 3) root-relative mm, crop camera frame""",
    "torchscript": """import torch
model = torch.jit.load("{path}").eval()
x = torch.rand(1, 3, {size}, {size})  # RGB crop in [0, 1], N = {size}
with torch.no_grad():
    joints = model(x)  # (1, {joints}, 3) root-relative mm, crop camera frame""",
    "onnx": """import numpy as np, onnxruntime as ort
session = ort.InferenceSession("{path}", providers=["CPUExecutionProvider"])
x = np.random.rand(1, 3, {size}, {size}).astype(np.float32)  # RGB crop in [0, 1]
joints = session.run(None, {{"{input}": x}})[0]  # (1, {joints}, 3) root-relative mm
print(joints.shape)""",
}


class JointsOnly(nn.Module):
    """The pose model reduced to ``image → joints`` (no taps, no PoseOutput)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).joints


@dataclass
class ExportReport:
    path: Path
    format: str
    size: int
    max_abs_diff: float
    snippet: str

    def summary(self) -> str:
        return (f"exported {self.format} ({self.size}x{self.size}) -> {self.path}\n"
                f"check vs PyTorch on random inputs: max |diff| = {self.max_abs_diff:.3g} mm\n"
                f"load it without depthpi:\n{self.snippet}")


def missing_onnx_packages(check: bool = True) -> list[str]:
    """Packages ONNX export (and its check) needs that are not installed."""
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if check else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def export_model(predictor: Predictor, fmt: str, out: str | Path, size: int | None = None,
                 check: bool = True, seed: int = 0) -> ExportReport:
    """Export ``predictor``'s model and check it against ``predictor.predict``.

    Args:
        fmt: ``pt2``, ``torchscript`` or ``onnx``.
        out: output file (written atomically; a ``.json`` description goes beside it).
        size: N of the input; default the run's ``data.pipeline.input_size``.
        check: compare with PyTorch on random inputs of two batch sizes.
    Raises:
        ValueError: unknown format, a model that needs depth, or a bad size.
        ImportError: ONNX packages missing (names them and how to install).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    if predictor.needs_depth:
        raise ValueError("export: this checkpoint needs depth input; export an RGB model (student or RGB baseline)")
    size = size or predictor.input_size
    if size < 17 or (size - 1) % 16:
        raise ValueError(f"--size {size}: (N - 1) must be divisible by 16 (e.g. 257, 129, 65)")
    if fmt == "onnx" and missing_onnx_packages(check):
        missing = missing_onnx_packages(check)
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = JointsOnly(predictor.model).eval()
    example = torch.rand(2, 3, size, size, device=predictor.device)
    with torch.no_grad(), atomic_path(out) as tmp:  # keeps the suffix: torch.export.save wants .pt2
        if fmt == "pt2":
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch()), str(tmp))
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(tmp))
        else:
            _export_onnx(model, example, tmp)
    _write_description(predictor, out, fmt, size)
    diff = check_export(predictor, out, fmt, size, seed) if check else float("nan")
    snippet = SNIPPETS[fmt].format(path=out.name, size=size, joints=predictor.skeleton.num_joints, input=INPUT_NAME)
    return ExportReport(out, fmt, size, diff, snippet)


def _dynamic_batch() -> dict:
    """``dynamic_shapes`` for ``JointsOnly.forward``: any batch size, fixed N."""
    return {"image": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=_dynamic_batch(),
                                optimize=True, verbose=False)
    program.save(str(path))


def load_exported(path: str | Path, fmt: str, device="cpu"):
    """A callable (B, 3, N, N) float32 numpy/tensor → (B, J, 3) numpy."""
    if fmt in ("pt2", "torchscript"):
        if fmt == "pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location=device).eval()

        def run(x):
            with torch.no_grad():
                return module(torch.as_tensor(x, device=device)).cpu().numpy()
        return run
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: np.asarray(torch.as_tensor(x).cpu(), np.float32)})[0]


def check_export(predictor: Predictor, path: Path, fmt: str, size: int, seed: int = 0) -> float:
    """Max |exported − PyTorch| (mm) over random inputs of batch 1 and 3."""
    run = load_exported(path, fmt, predictor.device)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in (1, 3):
        x = torch.rand(batch, 3, size, size, generator=generator).to(predictor.device)
        reference = predictor.predict_inputs(Inputs(x)).float().cpu().numpy()
        worst = max(worst, float(np.abs(run(x) - reference).max()))
    return worst


def _write_description(predictor: Predictor, out: Path, fmt: str, size: int) -> None:
    skeleton = predictor.skeleton
    record = {
        "format": fmt, "input": {"name": INPUT_NAME, "shape": ["B", 3, size, size], "dtype": "float32",
                                 "layout": "NCHW RGB", "range": [0, 1],
                                 "normalisation": "inside the model: (x - mean) / std",
                                 "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "output": {"name": OUTPUT_NAME, "shape": ["B", skeleton.num_joints, 3], "units": "mm",
                   "frame": "crop camera: x right, y down, z forward; root-relative"},
        "skeleton": skeleton.name, "joint_names": list(skeleton.joint_names),
        "parents": skeleton.parents.tolist(), "root": skeleton.root,
        "flip_permutation": skeleton.flip_permutation.tolist(),
        "model": {"arch": predictor.cfg.model.arch, "width": predictor.cfg.model.width,
                  "trained_input_size": predictor.input_size},
    }
    atomic_write_json(out.with_name(out.name + ".json"), record)
