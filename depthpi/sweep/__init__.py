"""SLURM sweeps of the thesis' ablations: spec expansion, submitit submission, status, tables.

``spec`` expands a YAML spec into stages of elements (``resources``: a stage's sbatch
terms; ``values``: what names and values may be and how they reach a job unchanged);
``submit`` turns them into submitit job arrays (or local jobs) whose callable sets up the
rendezvous and calls ``train(cfg)``; ``report`` reads sweep directories back (status,
collected tables); ``cli`` is the ``depthpi sweep`` command line.
"""
from depthpi.sweep.spec import Element, Resources, SpecError, Stage, Sweep, load_spec

__all__ = ["Element", "Resources", "SpecError", "Stage", "Sweep", "load_spec"]
