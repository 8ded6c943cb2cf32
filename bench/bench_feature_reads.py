"""A student on stored teacher features read through a throttled link: samples/s and bytes read.

The feature shards are served by a loopback HTTP server that sends at most ``--rate-mb``
MB/s in total (a token bucket shared by every connection), the image shards are read from
the local disk, and a student trains from them through the real engine and loader
(``launch/train_student.py``). Per run: the samples/s the engine logs over its last epoch
(first batch included: a shuffle buffer of one batch keeps the workers' start short), and
the feature bytes the server sent per training sample (tar requests only), which does not
depend on the code's own counters.

``--tree NAME=PATH`` (repeatable) names checkouts of depthpi to compare, e.g. the code
before and after a change; every checkout precomputes its own features (K = ``--views``)
from one shared teacher and split, then the runs alternate between the checkouts
``--rounds`` times, so that the load of a shared machine falls on all of them alike.

    python bench/bench_feature_reads.py --tree before=/tmp/old-checkout --tree after=. \\
        --rounds 3 --views 4 --rate-mb 2 [--record]
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import scalars  # noqa: E402
from benchlib import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class TokenBucket:
    """At most ``rate`` bytes/s over all callers: each chunk waits for its turn."""

    def __init__(self, rate: float):
        self.rate, self.lock, self.next_free = rate, threading.Lock(), time.monotonic()

    def take(self, size: int) -> None:
        with self.lock:
            start = max(time.monotonic(), self.next_free)
            self.next_free = start + size / self.rate
        time.sleep(max(0.0, start - time.monotonic()))


class ThrottledHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from ``directory``, sent in 64 KiB chunks through the shared bucket;
    the bytes of ``.tar`` bodies are added to ``server.tar_bytes``."""

    def copyfile(self, source, outputfile) -> None:
        counted = self.path.endswith(".tar")
        while chunk := source.read(1 << 16):
            self.server.bucket.take(len(chunk))
            outputfile.write(chunk)
            if counted:
                with self.server.count_lock:
                    self.server.tar_bytes += len(chunk)

    def log_message(self, *args) -> None:
        pass


def serve(directory: Path, rate: float) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(ThrottledHandler, directory=str(directory)))
    server.bucket, server.count_lock, server.tar_bytes = TokenBucket(rate), threading.Lock(), 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(cmd: list[str], tree: Path, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(f"$ {' '.join(map(str, cmd))}\n{result.stdout}{result.stderr}")
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed (log: {log}):\n{result.stderr[-3000:]}")


TEACHER = """
import sys, torch
from depthpi.config import DataConfig, TrainConfig, save_config
from depthpi.data.pipeline import PipelineConfig
from depthpi.models.posenet import ModelConfig, build_model
out, shards, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model_cfg = ModelConfig(kind="teacher", arch="resnet18", width=0.25, depth_bins=16, init="none")
cfg = TrainConfig(stage="teacher", model=model_cfg, data=DataConfig(train=f"{shards}/train", test=f"{shards}/test",
                  pipeline=PipelineConfig(input_size=size)))
save_config(cfg, f"{out}/config.yaml")
torch.save(build_model(model_cfg).state_dict(), f"{out}/export/last.pt")
"""


def prepare(work: Path, trees: dict[str, Path], args) -> Path:
    """Shards, one random teacher, and each tree's precomputed features; returns the teacher."""
    first = next(iter(trees.values()))
    train = args.batch * args.steps
    run([sys.executable, "-m", "depthpi.cli", "shards", "build", "--source", "synthetic", "--out", str(work / "synth"),
         "--train", str(train), "--test", str(args.batch), "--unlabeled", "0", "--per-shard", str(train // 8),
         "--workers", "2"], first, work / "shards.log")
    (work / "teacher" / "export").mkdir(parents=True)
    run([sys.executable, "-c", TEACHER, str(work / "teacher"), str(work / "synth"), str(args.size)], first,
        work / "teacher.log")
    for name, tree in trees.items():
        cmd = [sys.executable, "-m", "depthpi.cli", "precompute", "--teacher", str(work / "teacher/export/last.pt"),
               "--shards", str(work / "synth/train"), "--out", str(work / name / "features"), "--tap", args.tap,
               "--views", str(args.views), "--batch", "32"]
        run(cmd, tree, work / f"precompute-{name}.log")
    return work / "teacher/export/last.pt"


def train_once(name: str, tree: Path, work: Path, server, teacher: Path, args, index: int) -> dict:
    """One student run reading ``name``'s features through the server; its figures."""
    out = work / name / f"run{index}"
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}/features"
    overrides = [f"data.train={work / 'synth/train'}", f"data.test={work / 'synth/test'}", f"run.out_dir={out}",
                 f"optim.epochs={args.epochs}", f"data.batch_size={args.batch}", f"data.eval_batch_size={args.batch}",
                 f"data.num_workers={args.workers}", f"data.pipeline.input_size={args.size}", "model.init=none",
                 "model.init_checkpoint=null", f"teacher.weights={teacher}", "teacher.mode=precomputed",
                 f"teacher.features={url}", f"distill.tap={args.tap}", f"run.log_every={max(1, args.steps // 4)}",
                 f"run.checkpoint_every={10 ** 9}", "data.cache_dir=null",
                 f"data.shuffle_buffer={args.batch}"]
    with server.count_lock:
        server.tar_bytes = 0
    start = time.monotonic()
    run([sys.executable, str(tree / "launch/train_student.py"), "--config", str(tree / "configs/demo/student.yaml"),
         *overrides], tree, work / f"{name}-run{index}.log")
    wall = time.monotonic() - start
    samples = args.epochs * args.steps * args.batch
    tags = scalars(out)  # the engine's figures are cumulative over the epoch: its last point covers it all
    rate, wait = tags["train/samples_per_s"][-1][1], tags["train/data_wait_share"][-1][1]
    metrics = json.loads((out / "metrics.json").read_text())
    return {"samples_per_s": rate, "data_wait_share": wait, "wall_s": wall,
            "feature_bytes_per_sample": server.tar_bytes / samples,
            "reported_bytes_per_sample": (metrics.get("read") or {}).get("bytes_per_sample")}


def table(results: dict[str, list[dict]], args) -> str:
    rows = [f"| checkout (student on stored features, K = {args.views}, {args.size}×{args.size}, tap {args.tap}, "
            f"batch {args.batch}, {args.workers} workers; features served at {args.rate_mb:g} MB/s) | runs | "
            "samples/s of the last epoch, median (range) | data wait share, median | "
            "feature bytes per sample (served) | reported by the run (images / features) |",
            "|---|---:|---:|---:|---:|---|"]
    for name, runs in results.items():
        rates = [r["samples_per_s"] for r in runs]
        waits = [r["data_wait_share"] for r in runs]
        served = statistics.median(r["feature_bytes_per_sample"] for r in runs)
        reported = runs[-1]["reported_bytes_per_sample"]
        shown = "–" if not reported else f"{reported['images']:,.0f} / {reported['features']:,.0f}"
        rows.append(f"| {name} | {len(runs)} | {statistics.median(rates):.1f} ({min(rates):.1f}–{max(rates):.1f}) | "
                    f"{statistics.median(waits):.0%} | {served:,.0f} | {shown} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a depthpi checkout")
    parser.add_argument("--rounds", type=int, default=3, help="runs per checkout, alternating")
    parser.add_argument("--rate-mb", type=float, default=2.0, help="MB/s the feature server sends at most")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--tap", default="layer3.1.post_relu", help="the demo ResNet-18's last layer3 block")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch (the split holds exactly these)")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--work", help="keep shards, features, runs and logs here (default: a temporary directory)")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    results = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        teacher = prepare(work, trees, args)
        server = serve(work, args.rate_mb * 1e6)
        for index in range(args.rounds):
            for name, tree in trees.items():
                results[name].append(train_once(name, tree, work, server, teacher, args, index))
                print(name, index, json.dumps(results[name][-1]), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
        server.shutdown()
    print(table(results, args))
    if args.record:
        record("Student on stored features through a throttled link", table(results, args),
               "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
