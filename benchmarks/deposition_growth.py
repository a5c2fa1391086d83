#!/usr/bin/env python
"""Cost of adding one deposition's hills against the number of hills already there
(issue item: a deposition at 1e5 hills costs no more than one at 1e3).

One HillSet per size of --sizes (adaptive 26-D hills: centres standard normal,
metrics I + L L^T with L of entries N(0, 0.01), 64 different ones), all built first;
then --rounds rounds, each adding --per-deposition hills to every set in turn
(the order of the sets alternates between rounds) and making its pruning blocks
ready for the next evaluation (``HillSet.blocks``), as a deposition without merges
does. CPU time of this thread per deposition: median, best and 90th percentile per
size, and the ratios of the largest size to the smallest. Interleaving puts every
size under the same load, which on a shared machine drifts by tens of percent
over a minute.

    python benchmarks/deposition_growth.py                 # 1e3, 1e4, 1e5 hills; 60 rounds (1 min)
    python benchmarks/deposition_growth.py --profile       # plus cProfile of the smallest and largest

The 1e5 set holds 0.54 GB of metrics.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from biasserver.hills import HillSet  # noqa: E402

DIMENSION = 26


def synthetic_hills(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n, D), metrics (64, D, D)): hill s has metric metrics[s % 64]."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0.0, 0.1, (64, DIMENSION, DIMENSION))
    return rng.normal(size=(n, DIMENSION)), np.einsum("kij,klj->kil", factor, factor) + np.eye(DIMENSION)


def deposit(hills: HillSet, centres: np.ndarray, metrics: np.ndarray, first: int, count: int) -> float:
    """Add hills first .. first + count - 1 and ready the blocks; CPU seconds."""
    c = time.thread_time()
    for s in range(first, first + count):
        hills.add(centres[s], 1e-3, metrics[s % 64], s)
    hills.blocks()
    return time.thread_time() - c


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--per-deposition", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    extra = args.rounds * args.per_deposition
    centres, metrics = synthetic_hills(max(sizes) + 2 * extra)
    sets = {}
    for n in sizes:
        hills = HillSet(DIMENSION, adaptive=True)
        for s in range(n):
            hills.add(centres[s], 1e-3, metrics[s % 64], s)
        hills.blocks()
        while len(hills._heights) < n + 2 * extra:     # no storage doubling inside the timings
            hills._grow()
        sets[n] = hills
    times = {n: [] for n in sizes}
    for r in range(args.rounds):
        for n in sizes if r % 2 else sizes[::-1]:
            times[n].append(deposit(sets[n], centres, metrics, n + r * args.per_deposition, args.per_deposition))
    print(f"| hills | deposition of {args.per_deposition} hills, median CPU (ms) | best (ms) | 90th percentile (ms) |")
    print("|---|---|---|---|")
    for n in sizes:
        t = np.array(times[n]) * 1e3
        print(f"| {n} | {np.median(t):.3g} | {t.min():.3g} | {np.percentile(t, 90):.3g} |")
    small, large = min(sizes), max(sizes)
    print(f"\n{large} / {small} hills: median {np.median(times[large]) / np.median(times[small]):.2f}x, "
          f"best {min(times[large]) / min(times[small]):.2f}x")
    if args.profile:
        for n in (small, large):
            profile = cProfile.Profile()
            profile.enable()
            for r in range(20):
                deposit(sets[n], centres, metrics, n + extra + r * args.per_deposition, args.per_deposition)
            profile.disable()
            print(f"\ncProfile, 20 depositions at {n} hills:")
            pstats.Stats(profile).sort_stats("tottime").print_stats(8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
