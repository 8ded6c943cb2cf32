"""``depthpi sweep``: submit a spec, or report on a sweep directory.

    depthpi sweep SPEC.yaml [--dry-run] [--executor slurm|local] [--out DIR] [--var KEY=VALUE ...]
    depthpi sweep status DIR
    depthpi sweep collect DIR [--out DIR]
"""
from __future__ import annotations

import argparse

from depthpi.sweep.spec import Kind, load_spec


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep`` on the ``depthpi`` sub-command parsers (``launch/sweep.py`` runs the same)."""
    parser = subparsers.add_parser("sweep", help="submit a sweep of runs as SLURM job arrays; status; collect",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a sweep spec (configs/sweeps/*.yaml), or 'status' / 'collect'")
    parser.add_argument("dir", nargs="?", help="sweep directory (with status / collect)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch files; submit nothing")
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                        help="slurm: job arrays via sbatch; local: the same plan on this machine, waiting for it")
    parser.add_argument("--out", help="sweep directory (default: the spec's out:, else runs/sweeps/<name>); "
                                      "with collect: where the tables go")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                        help="value of a {KEY} placeholder of the spec (over its vars:)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> None:
    """Dispatch: status, collect, or plan (+ submit unless --dry-run)."""
    from submitit.core.utils import FailedJobError

    from depthpi.config import load_config
    from depthpi.sweep import report, submit

    if args.target in ("status", "collect"):
        if not args.dir:
            raise ValueError(f"depthpi sweep {args.target}: give the sweep directory, e.g. runs/sweeps/table6.1")
        if args.target == "status":
            print(report.format_status(report.status(args.dir)))
            return
        paths = report.collect(args.dir, args.out)
        print(paths["markdown"].read_text() + "\n".join(f"{k}: {v}" for k, v in paths.items()))
        return
    if any("=" not in v for v in args.var):
        raise ValueError(f"--var {next(v for v in args.var if '=' not in v)!r}: expected KEY=VALUE")
    sweep = load_spec(args.target, args.out, dict(v.split("=", 1) for v in args.var))
    for element in (e for e in sweep.elements if e.kind is Kind.train):  # a typo fails here, not in a queued job
        try:
            load_config(element.config, element.overrides)
        except ValueError as err:
            raise ValueError(f"sweep spec {sweep.spec_path}: element {element.name!r}: {err}") from None
    print(submit.describe(sweep, args.executor))
    if args.dry_run:
        print("\n(dry run: nothing submitted)")
    elif args.executor == "slurm":
        try:
            job_ids = submit.submit_slurm(sweep)
        except FailedJobError as err:
            raise SystemExit(f"depthpi sweep: sbatch failed ({' '.join(str(err).split())[:600]}); is a SLURM "
                             f"controller reachable from here (sinfo)? --executor local runs the sweep on this "
                             f"machine, --dry-run shows the sbatch files") from None
        print("\n" + "\n".join(f"submitted array {a}: job {j}" for a, j in job_ids.items()))
        print(f"status: depthpi sweep status {sweep.out_dir}")
    else:
        states = submit.run_local(sweep)
        print("\n" + "\n".join(f"{name}: {state}" for name, state in states.items()))
        if any(s != "done" for s in states.values()):
            raise SystemExit(f"depthpi sweep: {sum(s != 'done' for s in states.values())} element(s) did not "
                             f"finish; see depthpi sweep status {sweep.out_dir}")
