"""SLURM sweeps of the thesis' ablations: spec → submitit job arrays → status and tables (``docs/sweeps.md``)."""
