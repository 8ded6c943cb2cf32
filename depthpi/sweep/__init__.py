"""SLURM sweeps of the thesis' ablations (manual: ``docs/sweeps.md``).

``spec`` checks and expands a spec into job arrays of elements; ``submit`` hands them to
submitit (job arrays, or local jobs) with a callable that joins the job's process group and
calls ``train(cfg)``; ``report`` reads a sweep directory back (status, tables); ``cli`` is
``depthpi sweep``.
"""
from depthpi.sweep.spec import Element, JobArray, Resources, SpecError, Sweep, load_spec

__all__ = ["Element", "JobArray", "Resources", "SpecError", "Sweep", "load_spec"]
