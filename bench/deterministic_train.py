"""Train a stage as ``launch/train_<stage>.py`` does, with deterministic kernels.

For exactness checks (``bench/bench_resume.py``): on a GPU, cuDNN and cuBLAS may pick
kernels whose sums run in a varying order, so two identical runs can differ in the last
bits; here cuDNN is held to deterministic algorithms, cuBLAS to a fixed workspace, and
PyTorch warns (``warn_only``) about any other operation without a deterministic kernel.
After training it prints the process group it ran in (backend, world size).

    accelerate launch --num_processes 1 bench/deterministic_train.py baseline --config configs/demo/baseline_rgb.yaml
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

STAGES = ("baseline", "teacher", "student")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE and key=value overrides")
    args = parser.parse_args()
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    from depthpi.train.entry import main as train_main

    train_main(args.stage, args.args)
    if dist.is_initialized():
        print(f"deterministic_train: process group backend {dist.get_backend()}, world size {dist.get_world_size()}",
              flush=True)
    else:
        print("deterministic_train: no process group", flush=True)


if __name__ == "__main__":
    sys.exit(main())
