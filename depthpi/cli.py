"""``depthpi`` command line: one sub-command per job, each a thin call into the package."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from depthpi.log import configure_logging


def _shards_build(args) -> None:
    if args.source == "synthetic":
        from depthpi.data.build import build_synthetic

        build_synthetic(Path(args.out), {"train": args.train, "test": args.test, "unlabeled": args.unlabeled},
                        samples_per_shard=args.per_shard, workers=args.workers, seed=args.seed)
        return  # each split's summary is logged as it is finished
    from depthpi.data.converters import convert

    if not args.root:
        raise SystemExit(f"depthpi shards build --source {args.source}: --root RAW_DIR is required")
    own = {"missing_list": args.missing_list, "depth": args.depth, "sensor": args.sensor}  # per-source options
    summary = convert(args.source, args.root, args.out, every=args.every, workers=args.workers,
                      split_scheme=args.split_scheme, poses_file=args.poses_file,
                      intrinsics_file=args.intrinsics_file, videos_per_shard=args.videos_per_shard,
                      **{k: v for k, v in own.items() if v is not None})
    print(summary.format())


def _remote_reads(args) -> None:
    """``--stall-timeout`` / ``--retries`` of a command that reads a split from a server."""
    from dataclasses import replace

    from depthpi.data import remote

    remote.configure(replace(remote.settings(), stall_timeout_s=args.stall_timeout, retries=args.retries))


def _shards_inspect(args) -> None:
    from depthpi.data.build import inspect_split

    _remote_reads(args)
    print(inspect_split(args.dir, Path(args.out), count=args.count, input_size=args.size))


def _shards_verify(args) -> None:
    from depthpi.data.shard_verify import verify_split

    _remote_reads(args)
    verdict = verify_split(args.dir, workers=args.workers, progress=True)
    print("\n".join(verdict.lines()))
    if not verdict.ok:
        raise SystemExit(1)


def _shards_subset(args) -> None:
    from depthpi.data.shard_subset import parse_range, take_shards
    from depthpi.data.shards import read_manifest

    start, stop = parse_range(args.shards, len(read_manifest(args.src, check_files=False).shards))
    take_shards(args.src, args.out, start, stop, role=args.role)  # logs its summary


def _eval(args) -> None:
    from depthpi.predict import evaluate_checkpoint

    result = evaluate_checkpoint(args.ckpt, args.shards, args.out, config=args.config,
                                 batch_size=args.batch, num_workers=args.workers, flip_tta=args.flip_tta,
                                 threshold_mm=args.threshold)
    reference = result["mean_pose_mpjpe"]
    print(f"MPJPE {result['mpjpe']:.1f} mm (mean training pose: "
          f"{'n/a' if reference is None else f'{reference:.1f} mm'}) | PA-MPJPE {result['pa_mpjpe']:.1f} mm | "
          f"PCK@{result['threshold_mm']:g} {result['pck']:.3f} | AUC {result['auc']:.3f} | {result['count']} joints "
          f"-> {args.out}")
    skipped = result["skipped"]
    if skipped["total"]:
        print(f"skipped {skipped['total']} bad samples: {skipped['by_reason']} (examples in metrics.json)")


def _precompute(args) -> None:
    from depthpi.dist import world_info
    from depthpi.precompute import PrecomputeConfig, estimate, precompute

    if args.list_taps:
        print(_taps_of(args.teacher, args.config))
        return
    if not (args.shards and args.out):
        raise ValueError("--shards and --out are required (or --list-taps)")
    if Path(args.teacher).is_dir():  # the feature manifest records the weights file and its sha256
        raise ValueError(f"--teacher {args.teacher}: a directory; give the teacher's weights file, e.g. "
                         f"{Path(args.teacher) / 'export' / 'last.pt'}")
    cfg = PrecomputeConfig(teacher=args.teacher, shards=args.shards, out=args.out, tap=args.tap, views=args.views,
                           dtype=args.dtype, seed=args.seed, batch_size=args.batch)
    print(estimate(cfg, args.config))
    if args.estimate:
        return
    # One process per GPU under `accelerate launch`/torchrun, or one SLURM array task each.
    here = world_info()
    rank, world = (args.shard_index, args.num_shards) if args.num_shards is not None else (here.rank, here.size)
    device = str(here.device)
    manifest = precompute(cfg, rank=rank, world_size=world, device=device, config=args.config)
    done = "complete: manifest written" if manifest else "this part done; the manifest follows with the last part"
    print(f"[depthpi] precompute part {rank + 1}/{world} -> {args.out}: {done}")


def _taps_of(teacher: str, config: str | None) -> str:
    """The tap names ``--teacher``'s architecture accepts, and the thesis' choice among them."""
    from depthpi.config import load_config
    from depthpi.models.taps import LAYER_DEPTHS, block_alias, valid_taps
    from depthpi.weights import find_run_config

    model = load_config(config or find_run_config(teacher)).model
    is_teacher = model.kind == "teacher"
    names = [f"{name}  ({block_alias(name, model.arch, is_teacher) or 'no block alias'})"
             for name in valid_taps(model.arch, is_teacher)]
    thesis = f"layer3.{LAYER_DEPTHS[model.arch][2] - 1}.post_relu"
    return (f"taps of {teacher} ({model.kind}, {model.arch}), each with its thesis-style block name:\n"
            + "\n".join(names) + f"\nthe thesis' tap (the last layer3 block, after ReLU): {thesis}")


def _remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stall-timeout", type=float, default=120.0, metavar="S",
                        help="a URL's read is abandoned after S seconds without a byte (default 120)")
    parser.add_argument("--retries", type=int, default=2, help="further tries of a file a server failed to send")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthpi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    shards = commands.add_parser("shards", help="build, inspect or verify WebDataset shards").add_subparsers(
        dest="shards_command", required=True)
    build = shards.add_parser("build", help="convert a data source into shards (resumable)")
    build.add_argument("--source", default="synthetic", choices=["synthetic", "ntu", "pku", "h36m"])
    build.add_argument("--out", required=True, help="output root; one directory per split")
    build.add_argument("--workers", type=int, default=2, help="processes")
    synthetic = build.add_argument_group("synthetic source")
    synthetic.add_argument("--train", type=int, default=4000, help="labelled training samples")
    synthetic.add_argument("--test", type=int, default=1000, help="test samples (unseen subjects and cameras)")
    synthetic.add_argument("--unlabeled", type=int, default=2000, help="unlabelled RGB-D pairs")
    synthetic.add_argument("--per-shard", type=int, default=250)
    synthetic.add_argument("--seed", type=int, default=0)
    raw = build.add_argument_group("ntu / pku / h36m sources (layouts: docs/datasets.md)")
    raw.add_argument("--root", help="raw dataset directory as the dataset ships it")
    raw.add_argument("--every", type=int, help="keep every N-th frame (default: ntu/pku 5, h36m 64)")
    raw.add_argument("--split-scheme", help="ntu: thesis (Table 5.2), xsub, xview, xsub120, xset120; "
                                            "pku: cross-subject, cross-view")
    raw.add_argument("--poses-file", help="JSON Lines of external 17-joint poses and boxes (take precedence)")
    raw.add_argument("--intrinsics-file", help="ntu: per-setup K instead of fitting; pku (required): NTU's "
                                               "OUT/intrinsics.ntu.json; h36m: the camera file")
    raw.add_argument("--sensor", help="pku: NTU sensor id for every view, or per view L=0,M=1,R=1 (default: chosen "
                                      "per view from the depth frames)")
    raw.add_argument("--missing-list", help="ntu: samples with missing skeletons, one name per line")
    raw.add_argument("--videos-per-shard", type=int)
    raw.add_argument("--depth", choices=["auto", "full", "masked"], help="ntu depth maps to read (default auto)")
    build.set_defaults(func=_shards_build)
    inspect = shards.add_parser("inspect", help="summary, bad samples and a contact sheet of a split")
    inspect.add_argument("dir", help="split directory or URL (http(s)://, pipe:, ...)")
    inspect.add_argument("--count", type=int, default=16)
    inspect.add_argument("--size", type=int, default=257, help="crop size N of the pipeline")
    inspect.add_argument("--out", default="contact_sheet.png",
                         help="PNG path (default %(default)s in the working directory; the split is only read)")
    _remote_arguments(inspect)
    inspect.set_defaults(func=_shards_inspect)
    verify = shards.add_parser("verify", help="every shard's sha256, size and samples against the manifest; "
                                              "exit status 1 when any differs")
    verify.add_argument("dir", help="split directory or URL (http(s)://, pipe:, ...)")
    verify.add_argument("--workers", type=int, default=2, help="processes reading shards")
    _remote_arguments(verify)
    verify.set_defaults(func=_shards_verify)
    subset = shards.add_parser("subset", help="a split of a range of another split's shards (hard links), e.g. "
                                              "a small labelled part and the rest as unlabelled pairs")
    subset.add_argument("src", help="local split directory")
    subset.add_argument("--out", required=True, help="new split directory")
    subset.add_argument("--shards", required=True, help="START:STOP shard indices in stored order, e.g. 0:12 or 12:")
    subset.add_argument("--role", help="the new split's role in its manifest (e.g. unlabeled); default: the source's")
    subset.set_defaults(func=_shards_subset)

    pre = commands.add_parser("precompute", help="run a frozen teacher once, store its features per view")
    pre.add_argument("--teacher", required=True, help="teacher weights (run/export/last.pt)")
    pre.add_argument("--config", help="teacher run config (default: config.yaml of the teacher's run)")
    pre.add_argument("--shards", help="source split directory (required)")
    pre.add_argument("--tap", default="layer3.5.post_relu", help="teacher feature map to store, by either of its "
                     "names (layer3.5.post_relu or block13.post_relu; default %(default)s: ResNet-50's 13th block; "
                     "--list-taps for others)")
    pre.add_argument("--list-taps", action="store_true", help="print the taps the teacher's architecture accepts")
    pre.add_argument("--views", type=int, default=4, help="K views per sample; view 0 is un-augmented")
    pre.add_argument("--dtype", default="fp16", help="fp16, or uint8 (stores sigmoid(F))")
    pre.add_argument("--out", help="feature split directory (mirrors --shards; required)")
    pre.add_argument("--seed", type=int, default=0, help="seed of the augmented views")
    pre.add_argument("--batch", type=int, default=64)
    pre.add_argument("--estimate", action="store_true", help="print the size and stop")
    pre.add_argument("--shard-index", type=int, default=0, help="this part (SLURM array index)")
    pre.add_argument("--num-shards", type=int, help="number of parts (SLURM array size)")
    pre.set_defaults(func=_precompute)

    evaluate = commands.add_parser("eval", help="evaluate a trained model on a split")
    evaluate.add_argument("--ckpt", required=True, help="a run directory (its export/last.pt), a weights file "
                          "(run/export/last.pt or best.pt), or a checkpoint directory (run/checkpoints/step-N)")
    evaluate.add_argument("--shards", required=True, help="split directory of labelled pose samples, with "
                          "manifest.json (a test split; not stored teacher features)")
    evaluate.add_argument("--config", help="run config (default: config.yaml of the run the ckpt is in)")
    evaluate.add_argument("--out", default="eval", help="output directory")
    evaluate.add_argument("--batch", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--flip-tta", action="store_true", help="average with the prediction on the mirrored crop")
    evaluate.add_argument("--threshold", type=float, help="PCK/AUC threshold in mm (default: by the split's "
                          "source data set, 50 mm NTU/PKU, 150 mm Human3.6M)")
    evaluate.set_defaults(func=_eval)

    from depthpi.inference_cli import add_inference_parsers
    from depthpi.sweep.cli import add_sweep_parser

    add_inference_parsers(commands)
    add_sweep_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    from depthpi.data.remote import ServerUnreachable
    from depthpi.io import DiskFullError

    try:
        args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:  # user errors: one line, status 2
        parser.exit(2, f"depthpi {args.command}: error: {err}\n")
    except (DiskFullError, ServerUnreachable) as err:  # a cause outside the command: one line, status 1
        parser.exit(1, f"depthpi {args.command}: error: {err}\n")


if __name__ == "__main__":
    main()
