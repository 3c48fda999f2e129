"""Training-window read speed: our chunked dataset format vs the same episodes as a Minari dataset.

Collects (or reuses) a small set of real lane-keeping demonstrations, exports it to Minari (arrow and parquet
storage, lossless images) in a temporary ``MINARI_DATASETS_PATH``, then times, blocks interleaved round-robin
so that every format shares the same background load:

- ``load``: opening the dataset and reading every episode into memory (``DemoDataset(DIR)`` with and without
  checksum verification; ``MinariDemoDataset(ID)``), i.e. the wait before the first training batch;
- ``epoch``: one pass of ``iter_windows`` (batch 16, window 16, stride 8, shuffled) over the loaded arrays, as
  ``ltc-control train`` runs it (the same code for both formats once loaded);
- ``first batch``: a fresh load plus the first batch of windows;
- ``cold load``: the load after the dataset's files were dropped from the page cache (``posix_fadvise``);
- bytes on disk.

Usage::

    python experiments/bench/dataset_read_speed.py [--data DIR] [--num_roads 4] [--height 48] [--width 96]
        [--repeats 5] [--write experiments/results/dataset_read_speed.md]

With ``--data`` the given folder is read (never written); without it a fresh one is collected in a temporary
folder (about 20 s for 4 roads on one core).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _evict(path: Path) -> None:
    """Drop the files under ``path`` from the page cache (posix_fadvise DONTNEED; no root needed)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _collect(out: Path, num_roads: int, height: int, width: int, road_length: float) -> None:
    from ltc_control.agents.collection import CollectConfig, EnvSpec, collect

    cfg = CollectConfig(
        env=EnvSpec(kwargs={"image_height": height, "image_width": width, "road_length": road_length}),
        num_roads=num_roads,
        workers=1,
    )
    collect(out, cfg, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="existing dataset folder (else collect one)")
    parser.add_argument("--num_roads", type=int, default=4)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--road_length", type=float, default=250.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="write the results as markdown here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="dataset_read_speed_"))
    try:
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the Minari exports (and a collected dataset) are scratch


def _run(args: argparse.Namespace, tmp: Path) -> int:
    import numpy as np

    os.environ["MINARI_DATASETS_PATH"] = str(tmp / "minari")
    data = args.data
    if data is None:
        data = tmp / "demos"
        t0 = time.perf_counter()
        _collect(data, args.num_roads, args.height, args.width, args.road_length)
        print(f"collected {data} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    from ltc_control.agents.datasets import DemoDataset
    from ltc_control.agents.minari_io import MinariDemoDataset, export_minari

    exports: dict[str, Path] = {}
    for fmt in ("arrow", "parquet"):
        t0 = time.perf_counter()
        exports[fmt] = export_minari(data, f"bench/demos-{fmt}-v0", data_format=fmt)
        print(f"exported {fmt} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    openers: dict[str, Callable[[], Any]] = {
        "ours (npz chunks, sha256 verified)": lambda: DemoDataset(data, verify=True),
        "ours (npz chunks, no verify)": lambda: DemoDataset(data, verify=False),
        "Minari arrow": lambda: MinariDemoDataset("bench/demos-arrow-v0"),
        "Minari parquet": lambda: MinariDemoDataset("bench/demos-parquet-v0"),
    }
    sizes = {
        "ours (npz chunks, sha256 verified)": _bytes(data),
        "ours (npz chunks, no verify)": _bytes(data),
        "Minari arrow": _bytes(exports["arrow"]),
        "Minari parquet": _bytes(exports["parquet"]),
    }
    batch, window, stride = 16, 16, 8
    load: dict[str, list[float]] = {k: [] for k in openers}
    epoch: dict[str, list[float]] = {k: [] for k in openers}
    first: dict[str, list[float]] = {k: [] for k in openers}
    cold: dict[str, list[float]] = {k: [] for k in openers}
    folders = {name: data if name.startswith("ours") else exports[name.split()[1]] for name in openers}
    reference = None
    for opener in openers.values():  # warm-up: page cache, imports
        ds = opener()
        if reference is None:
            reference = ds
        assert np.array_equal(ds.images, reference.images) and np.array_equal(ds.labels, reference.labels)
    assert reference is not None
    load_avg = [os.getloadavg()[0]]
    for r in range(args.repeats):
        for name, opener in openers.items():
            t0 = time.perf_counter()
            ds = opener()
            t1 = time.perf_counter()
            next(iter(ds.iter_windows(batch, window, stride=stride, seed=0, epoch=r)))
            t2 = time.perf_counter()
            for _ in ds.iter_windows(batch, window, stride=stride, seed=0, epoch=r):
                pass
            t3 = time.perf_counter()
            _evict(folders[name])
            t4 = time.perf_counter()
            opener()
            cold[name].append(time.perf_counter() - t4)
            load[name].append(t1 - t0)
            first[name].append(t2 - t0)
            epoch[name].append(t3 - t2)
            del ds
    load_avg.append(os.getloadavg()[0])
    windows = len(reference.window_starts(window, stride))
    lines = [
        "# Training-window read speed: our dataset format vs Minari",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"load average (1 min) before / after: {load_avg[0]:.1f} / {load_avg[1]:.1f} (shared machine)",
        f"- Data: {reference.num_episodes} real LTC/LaneKeeping-v0 expert episodes, {len(reference)} steps, "
        f"images {tuple(reference.images.shape[1:])} uint8, {windows} windows of {window} steps "
        f"(stride {stride}), batch {batch}",
        f"- Method: median of {args.repeats} rounds, formats interleaved round-robin; 'load' with the page "
        "cache warm, 'cold load' after dropping the dataset's files from it (posix_fadvise DONTNEED). "
        "Minari exports are lossless (jpeg_encoding=False); the loaded arrays are checked equal.",
        "",
        "| format | bytes on disk | load (s) | cold load (s) | load + first batch (s) "
        "| epoch of windows (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in openers:
        lines.append(
            f"| {name} | {sizes[name] / 1e6:.1f} MB | {statistics.median(load[name]):.3f} | "
            f"{statistics.median(cold[name]):.3f} | "
            f"{statistics.median(first[name]):.3f} | {statistics.median(epoch[name]):.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
