#!/usr/bin/env python
"""Submit a sweep spec as SLURM job arrays: ``depthpi sweep``, for a checkout without the console script.

    python launch/sweep.py configs/sweeps/table6.1.yaml --dry-run
    python launch/sweep.py configs/sweeps/table6.1.yaml --executor local --out runs/sweeps/t61
    python launch/sweep.py status runs/sweeps/table6.1
    python launch/sweep.py collect runs/sweeps/table6.1
"""
import sys

from depthpi.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
