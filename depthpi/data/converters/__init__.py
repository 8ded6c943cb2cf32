"""Raw-dataset converters: NTU RGB+D, PKU-MMD, Human3.6M → depthpi shards.

One entry point, :func:`convert`; one module per source (:mod:`.ntu`, :mod:`.pku`,
:mod:`.h36m`), :mod:`.kinect_recordings` the frame loop NTU and PKU-MMD share,
:mod:`.kinect` the Kinect v2 parsers, camera frame and joint mapping, :mod:`.kinect_sensors`
the Kinects behind NTU's setups and PKU-MMD's choice among them, :mod:`.h36m_cameras` the
Human3.6M camera files, :mod:`.common` crops, the summary and the resumable parallel
driver. The raw layouts each source reads are described in docs/datasets.md.

Output: ``OUT/<split>/<source>-NNNNNN.tar`` + ``OUT/<split>/manifest.json`` per split
(``train``/``test`` for NTU; ``unlabeled``/``test`` for PKU-MMD; ``test`` for
Human3.6M), ``OUT/summary.<source>.json`` and, for NTU, ``OUT/intrinsics.ntu.json``.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from depthpi.data.converters.common import ConverterError, Summary, run_conversion

SOURCES = ("ntu", "pku", "h36m")
# the split directories each converter writes under OUT (configs name them: shards/pku/unlabeled)
SPLITS = {"ntu": ("train", "test"), "pku": ("unlabeled", "test"), "h36m": ("test",)}


def _module(source: str):
    if source == "ntu":
        from depthpi.data.converters import ntu as module
    elif source == "pku":
        from depthpi.data.converters import pku as module
    elif source == "h36m":
        from depthpi.data.converters import h36m as module
    else:
        raise ConverterError(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    return module


def convert(source: str, root: str | Path, out: str | Path, *, every: int | None = None, workers: int = 1,
            split_scheme: str | None = None, poses_file: str | Path | None = None,
            intrinsics_file: str | Path | None = None, videos_per_shard: int | None = None,
            progress: bool = True, **options) -> Summary:
    """Convert a raw dataset into shards; resumable (finished shards are kept).

    Args:
        source: ``ntu``, ``pku`` or ``h36m``.
        root: the raw dataset root (layouts in docs/datasets.md).
        out: output root, e.g. ``shards/ntu``; one directory per split.
        every: convert every N-th frame (default per source: NTU/PKU 5, H36M 64).
        workers: processes (one shard = ``videos_per_shard`` videos at a time each).
        split_scheme: NTU: thesis (default) | xsub | xview | xsub120 | xset120;
            PKU: cross-subject (default) | cross-view.
        poses_file: NTU/PKU: JSON Lines pseudo-ground truth (takes precedence).
        intrinsics_file: NTU: per-setup or global intrinsics JSON instead of fitting;
            PKU (required): a previous NTU conversion's ``intrinsics.ntu.json`` (its
            sensors), or JSON with rgb_K and depth_K; H36M: the camera file (any
            layout of :mod:`.h36m_cameras`; default ROOT/cameras.json).
        videos_per_shard: videos per shard (default per source).
        progress: show a progress bar.
        **options: source-specific: NTU ``missing_list``, ``depth`` (auto|full|masked),
            ``fit_videos``; PKU ``sensor`` (an NTU sensor id, or ``L=0,M=1,R=1``; default
            chosen per view); all ``context`` (crop side / box side, 1.4), ``max_side`` (320).
    Returns:
        The merged :class:`Summary` (also written to ``OUT/summary.<source>.json``);
        ``str(summary.format())`` is the end-of-run report.
    Raises:
        ConverterError: wrong root or options, before any work.
    """
    module = _module(source)
    _check_options(source, module, options)
    kwargs = dict(options)
    if split_scheme is not None:
        kwargs["split_scheme"] = split_scheme
    converter, jobs, summary, params = module.prepare(Path(root), Path(out), every=every, poses_file=poses_file,
                                                      intrinsics_file=intrinsics_file, workers=workers, **kwargs)
    per_shard = videos_per_shard or module.DEFAULT_VIDEOS_PER_SHARD
    if per_shard < 1:
        raise ConverterError(f"videos_per_shard must be >= 1, got {per_shard}")
    params = {**params, "videos_per_shard": per_shard}
    run_conversion(converter, jobs, Path(out), videos_per_shard=per_shard, workers=workers, params=params,
                   summary=summary, progress=progress)
    return summary


_COMMON = {"every", "workers", "split_scheme", "poses_file", "intrinsics_file"}


def _check_options(source: str, module, options: dict) -> None:
    """Refuse options ``source`` does not take (a misspelt ``contxt=`` would otherwise be ignored)."""
    own = {name for name, p in inspect.signature(module.prepare).parameters.items()
           if p.kind == p.KEYWORD_ONLY} - _COMMON
    unknown = sorted(set(options) - own)
    if unknown:
        raise ConverterError(f"{source}: unknown option(s) {', '.join(unknown)}; {source} takes "
                             f"{', '.join(sorted(own)) or 'none'} besides {', '.join(sorted(_COMMON))}")


__all__ = ["SOURCES", "SPLITS", "ConverterError", "Summary", "convert"]
