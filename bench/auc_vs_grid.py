"""Our AUC (exact integral, thesis eq. 5.9 / T) against MMPose's 31-threshold average.

MMPose's ``keypoint_3d_auc`` (the MPI-INF-3DHP protocol) averages PCK over the thresholds
0, 5, ..., 150 mm with a strict ``e < t``; depthpi's AUC is (1/T)∫₀ᵀ PCK(t) dt with
PCK(t) counting ``e <= t``. This script draws synthetic root-relative errors (17 joints,
the root exact, the others from a few error distributions at several MPJPE levels), runs
them through :class:`depthpi.metrics.PoseMetrics`, and prints both values and their gap
for T = 150 mm (Human3.6M, 3DHP) and T = 50 mm (NTU RGB+D, PKU-MMD; the grid then being
0, T/30, ..., T). Prints one Markdown table.

    python bench/auc_vs_grid.py [--poses 20000] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

from depthpi.metrics import PoseMetrics

NUM_JOINTS = 17
GRID_POINTS = 31


def _noise(kind: str, sigma: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, J, 3)`` prediction offsets in mm; ``sigma`` (J,) per-joint scales, 0 for the root."""
    shape = (n, NUM_JOINTS, 3)
    if kind == "gaussian":  # error magnitudes Maxwell-distributed
        return rng.normal(size=shape) * sigma[None, :, None]
    if kind == "outliers":  # 90 % Gaussian, 10 % of joints four times as far off
        far = np.where(rng.random(shape[:2]) < 0.1, 4.0, 1.0)
        return rng.normal(size=shape) * (sigma[None, :] * far)[..., None]
    if kind == "lognormal":  # heavy right tail, random direction
        direction = rng.normal(size=shape)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        return direction * (sigma[None, :] * rng.lognormal(0.0, 0.6, shape[:2]))[..., None]
    raise ValueError(f"unknown error distribution {kind!r}")


def _errors_and_metrics(kind: str, target_mpjpe: float, threshold: float, poses: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Errors ``(poses·J,)`` rescaled to MPJPE ``target_mpjpe``, and PoseMetrics' result."""
    sigma = np.linspace(0.6, 1.4, NUM_JOINTS)  # extremities worse than the torso
    sigma[0] = 0.0  # the root of a root-relative pose is exact
    offsets = _noise(kind, sigma, rng, poses)
    errors = np.linalg.norm(offsets, axis=-1)
    offsets *= target_mpjpe / errors.mean()
    target = np.zeros_like(offsets)
    metrics = PoseMetrics(threshold_mm=threshold, num_joints=NUM_JOINTS)
    metrics.update(offsets, target, np.ones((poses, NUM_JOINTS), bool))
    return np.linalg.norm(offsets, axis=-1).ravel(), metrics.compute()


def grid_auc(errors: np.ndarray, threshold: float) -> float:
    """MMPose's ``keypoint_3d_auc`` / 100: mean of PCK(e < t) over 31 thresholds 0 .. T."""
    grid = np.linspace(0.0, threshold, GRID_POINTS)
    return float((errors[None, :] < grid[:, None]).mean(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| T (mm) | errors | MPJPE (mm) | PCK@T | AUC, ours | AUC, 31-point grid | grid − ours |")
    print("|---|---|---|---|---|---|---|")
    gaps = []
    for threshold, levels in ((150.0, (30, 50, 80, 120, 200)), (50.0, (15, 25, 40, 60))):
        for kind in ("gaussian", "outliers", "lognormal"):
            for level in levels:
                errors, result = _errors_and_metrics(kind, level, threshold, args.poses, rng)
                grid = grid_auc(errors, threshold)
                gaps.append(grid - result["auc"])
                print(f"| {threshold:g} | {kind} | {result['mpjpe']:.0f} | {result['pck']:.3f} | "
                      f"{result['auc']:.4f} | {grid:.4f} | {gaps[-1]:+.4f} |")
    gaps = np.abs(gaps)
    print(f"\n|grid − ours|: median {np.median(gaps):.4f}, max {gaps.max():.4f} "
          f"(×100 on MMPose's scale: median {100 * np.median(gaps):.2f}, max {100 * gaps.max():.2f})")


if __name__ == "__main__":
    main()
