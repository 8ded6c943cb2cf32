"""Shared fixtures: tiny fake samples, split directories of real tar shards, an HTTP server for them."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from depthpi.data import remote
from depthpi.data.schema import Sample, SampleError, SampleMeta, encode_sample
from depthpi.data.shards import Manifest, TarShard, write_manifest

pytest_plugins = ("slurm_cluster",)  # the session SLURM fixture (tests/slurm_cluster.py)
NUM_JOINTS = 17

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each (and in the processes they start). Two
    # workers of two OpenMP threads each ran the tiny models' steps 4× slower than one
    # thread each (measured on a loaded 2-core machine).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """How the two workers share the suite (``--dist loadgroup``, launch/test.sh): a file's
    tests stay together on one worker (they share its module fixtures) unless the file sets
    ``SPREAD_OVER_WORKERS = True``; the ``slow`` tests are handed out first, so that neither
    worker is left alone with a long one at the end."""
    for item in items:
        spread = getattr(getattr(item, "module", None), "SPREAD_OVER_WORKERS", False)
        if not spread and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def fake_sample(key: str, seed: int = 0, labeled: bool = True, rgb_shape=(48, 40), depth_shape=None,
                extra: dict | None = None) -> Sample:
    """A small random sample: smooth rgb (H, W, 3) uint8, depth (h, w) uint16 mm, identity K and R, 17 joints."""
    rng = np.random.default_rng(seed)
    height, width = rgb_shape
    depth_shape = depth_shape or rgb_shape
    meta = SampleMeta(dataset="fake", subject=f"S{seed % 3}", camera="C0", action="walk", frame=seed,
                      labeled=labeled, rgb_K=np.eye(3), depth_K=np.eye(3), R=np.eye(3), t=np.zeros(3),
                      joints=rng.uniform(-500, 500, (NUM_JOINTS, 3)) + [0, 0, 3000] if labeled else None,
                      joint_valid=rng.uniform(size=NUM_JOINTS) > 0.1,
                      bbox=np.array([2.0, 3.0, width - 4.0, height - 6.0]), extra=dict(extra or {}))
    # Smooth colours: JPEG's 4:2:0 chroma subsampling would smear pixel noise beyond any tolerance.
    coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgb = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return Sample(key=key, rgb=rgb,
                  depth=rng.integers(0, 8000, depth_shape, dtype=np.uint16), meta=meta)


def make_indexed_sample(index: int, prefix: str = "k", skip_every: int = 0) -> Sample | None:
    """``build_shards`` callback (picklable with functools.partial): index → sample.

    With ``skip_every = n``, index n−1, 2n−1, ... returns None and n−2, 2n−2, ... raises SampleError.
    """
    if skip_every and index % skip_every == skip_every - 1:
        return None
    if skip_every and index % skip_every == skip_every - 2:
        raise SampleError(f"{prefix}{index:06d}", "joints", "fake converter rejected it")
    return fake_sample(f"{prefix}{index:06d}", seed=index)


def map_identity(sample: Sample, epoch: int) -> dict:
    """Loader map_fn: the stored arrays as they are; rejects samples marked ``extra.reject``."""
    if sample.meta.extra.get("reject"):
        raise SampleError(sample.key, "joints", "rejected by map_fn (implausible pose)", None)
    return {"key": sample.key, "rgb": sample.rgb, "depth": sample.depth, "epoch": epoch,
            "joints": sample.meta.joints.astype(np.float32), "labeled": sample.meta.labeled}


def key_of(shard: int, index: int) -> str:
    return f"s{shard:03d}_{index:04d}"


def write_split(split_dir: Path, counts: list[int],
                mutate: Callable[[str, dict], dict] | None = None, **sample_kw) -> Manifest:
    """Write one shard per non-zero entry of ``counts`` (keys from :func:`key_of`) and a manifest.

    ``mutate(key, members)`` may return altered tar members to plant bad samples.
    """
    shards = []
    for shard, count in enumerate(counts):
        if not count:
            continue
        tar = TarShard(split_dir / f"shard-{shard:06d}.tar")
        for i in range(count):
            members = encode_sample(fake_sample(key_of(shard, i), seed=1000 * shard + i, **sample_kw))
            tar.write(mutate(members["__key__"], members) if mutate else members)
        shards.append(tar.finish())
    manifest = Manifest(shards=shards, total_count=sum(counts), params={"fixture": True})
    write_manifest(split_dir, manifest)
    return manifest


@pytest.fixture
def make_split(tmp_path):
    """``make_split(counts, name="train", mutate=None)`` → split directory of real tar shards."""
    def make(counts: list[int], name: str = "train", mutate=None, **sample_kw) -> Path:
        split_dir = tmp_path / name
        write_split(split_dir, counts, mutate, **sample_kw)
        return split_dir
    return make


@pytest.fixture(scope="session")
def deepspeed_cpu_ops():
    """Build DeepSpeed's CPU communication op once, before any multi-rank DeepSpeed run.

    DeepSpeed JIT-compiles it on first use in every rank; two ranks compiling into an
    empty extension cache at once made the first ZeRO run on a fresh machine flaky.
    ``launch/test.sh`` starts that build in the background before pytest (it takes ~1.5 min
    of one core on a fresh machine) and names a file it touches when done
    (``DEPTHPI_SHM_OP_BUILT``): wait for it; and a file lock keeps the test workers (pytest-xdist)
    from compiling side by side, so that only one compiler ever runs.
    """
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    from filelock import FileLock  # a dependency of torch

    marker = os.environ.get("DEPTHPI_SHM_OP_BUILT")
    if marker:
        deadline = time.monotonic() + 900
        while not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(1)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    with FileLock(Path(os.environ.get("TMPDIR", "/tmp")) / "depthpi-shm-op.lock"):  # one builder per machine
        subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                       env=env, check=True, capture_output=True, timeout=600)


def tb_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag of a run's TensorBoard event files, read back: {tag: [value per logged step]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def quick_remote_retries():
    """Remote reads retry after 10 ms in tests (real runs: 2 s, doubling); restored after the test."""
    before = remote.settings()
    remote.configure(remote.RemoteConfig(retry_delay_s=0.01))
    yield
    remote.configure(before)


class _ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; files named in ``server.drop`` lose their connection halfway, those
    in ``server.stall`` send half their bytes and then nothing until the test ends."""

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        self.server.requests[name] += 1
        if name not in self.server.drop | self.server.stall:
            return super().do_GET()
        data = (self.server.root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])  # then the connection closes: curl exits 18
        if name in self.server.stall:
            self.wfile.flush()
            self.server.released.wait(60)  # a stopped process: the connection stays open, silent

    def log_message(self, *args):
        pass


def serve_directory(root: Path, port: int = 0, handler=None) -> http.server.ThreadingHTTPServer:
    """A started HTTP server on 127.0.0.1:``port`` (0: any free one) over ``root``; stop it with
    :func:`stop_server`. ``handler``: a :class:`_ShardHandler` subclass."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                             functools.partial(handler or _ShardHandler, directory=str(root)))
    server.root, server.drop, server.stall, server.requests = root, set(), set(), Counter()
    server.released = threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_server(server: http.server.ThreadingHTTPServer) -> None:
    """Stop serving and close the port: connections are refused from now on."""
    server.released.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_root(tmp_path):
    """``(url, server)``: an HTTP server on 127.0.0.1 over ``tmp_path/www``, stopped after the test."""
    if shutil.which("curl") is None:  # http(s) shards are read through curl
        pytest.skip("curl is not installed")
    root = tmp_path / "www"
    root.mkdir()
    server = serve_directory(root)
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    stop_server(server)


@pytest.fixture
def silent_server():
    """``url`` of a server on 127.0.0.1 that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.fixture
def small_disk(tmp_path):
    """``mount(mib)`` → a directory on a fresh tmpfs of that many MiB (a file system that
    fills up for real); ``resize(path, mib)`` grows it in place. Needs root to mount:
    skipped where mounting is not allowed."""
    mounts = []

    def mount(mib: float) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mib * 2**20)}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:120]})")
        mounts.append(where)
        return where

    def resize(where: Path, mib: float) -> None:
        subprocess.run(["mount", "-o", f"remount,size={int(mib * 2**20)}", str(where)], check=True)

    mount.resize = resize
    yield mount
    for where in mounts:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The synthetic set every module shares, rendered once per test run: ``train`` (32 samples,
    4 shards of 8) and ``test`` (16 samples, 2 shards). Read it; never write into it (copy the
    split first, or take a :func:`subset_split`)."""
    from depthpi.data.build import build_synthetic

    root = tmp_path_factory.mktemp("synth")
    build_synthetic(root, {"train": 32, "test": 16}, samples_per_shard=8, workers=1)
    return root


def subset_split(source: Path, target: Path, shards: list[int]) -> Path:
    """A split of some of ``source``'s shards (links to the same files, its own manifest)."""
    from depthpi.data.shards import read_manifest

    manifest = read_manifest(source)
    chosen = [manifest.shards[i] for i in shards]
    target.mkdir(parents=True)
    for shard in chosen:
        (target / shard.name).symlink_to(source / shard.name)
    subset = Manifest(shards=chosen, total_count=sum(s.count for s in chosen), skeleton=manifest.skeleton,
                      params={**manifest.params, "subset_of": str(source)})
    write_manifest(target, subset)
    return target
