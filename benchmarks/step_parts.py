#!/usr/bin/env python
"""The parts of a biased Si64 step, measured on the gmetad source tree given by --tree
(this checkout by default, or an older one: a git worktree), for bench_bias.py
--sections parts, which runs it for the trees it compares in turn. Prints one JSON line.

Setting: the long runs' (h = 1 meV, adaptive sigma 1 A, stride 20, compression 0.3),
each cap of --caps reached: hills deposited on copies of Si64 displaced by 0.15 A
(normal), the query displaced by 0.1 A. Per cap, CPU time (this thread; the fsync
thread of the hills file is not in it) and wall time, best of --repeats:

- ``sf``: symmetry functions and derivatives of the biased atoms;
- ``hills``: V and dV/dG of every atom (the kernel);
- ``forces``: forces and virial from dV/dG;
- ``step``: a whole GMetaDBias.step that does not deposit;
- ``deposit_step``: a whole step that deposits (64 hills merged, the hills file
  appended): ``deposition`` = deposit_step - step, per MD step divided by the stride;
- the deposition's profile (cProfile's cumulative wall time, per deposition): ``metrics``
  (the hill metrics: Jacobians and eigendecompositions), ``merges``, ``file``
  (formatting and writing the records), ``nearest`` (a separate evaluation of the
  hills for the merge targets, when the step's own evaluation does not give them).

OMP_NUM_THREADS (the C kernels) comes from the environment; BLAS runs one thread.
The process exits with status 1, after the JSON line, if a measurement is not
plausible (see :func:`problems`).

    python benchmarks/step_parts.py --quick    # CI: bench_bias.py's parts table at toy size

--quick prints the table of ``bench_bias.py --sections parts`` for this checkout
(bench_sections.step_parts, which runs this script once per thread count) with
max_hills 100 and 200, 1 and 2 threads, one round of 2 repeats (13 s at load average 3).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK = {"caps": (100, 200), "threads": (1, 2), "rounds": 1, "repeats": 2}
#: the parts timed as [CPU ms, wall ms]
TIMED = ("sf", "hills", "forces", "step", "deposit_step")


def best(fn, repeats: int) -> tuple[float, float]:
    """(best CPU time, best wall time) in ms over ``repeats`` calls of ``fn``."""
    cpu = wall = float("inf")
    for _ in range(repeats):
        c, t = time.thread_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.thread_time() - c), min(wall, time.perf_counter() - t)
    return cpu * 1e3, wall * 1e3


def measure(cap: int, repeats: int, stride: int = 20, seed: int = 0) -> dict:
    """The parts of a step at max_hills ``cap`` (see the module docstring): each timed
    part as [CPU ms, wall ms], the deposition's profile in wall ms, the hills at the end."""
    from ase.build import bulk

    from biasserver.bias import GMetaDBias
    from biasserver.symmetry import SymmetryFunctions

    sf = SymmetryFunctions.default(["Si"])
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bias = GMetaDBias(sf, height=1e-3, width=1.0, stride=stride, species={"Si": 1.0},
                          compression=0.3, max_hills=cap, hills_file=os.path.join(tmp, "HILLS"))
        while len(bias.hills["Si"]) < cap:
            frame = atoms.copy()
            frame.positions += rng.normal(0.0, 0.15, frame.positions.shape)
            bias.deposit(frame)
        query = atoms.copy()
        query.positions += rng.normal(0.0, 0.1, query.positions.shape)
        desc = bias._descriptors(query)
        _, dv, _ = bias.hills["Si"].evaluate(desc.values["Si"])
        out["sf"] = best(lambda: bias._descriptors(query), repeats)
        out["hills"] = best(lambda: bias.hills["Si"].evaluate(desc.values["Si"]), repeats)
        out["forces"] = best(lambda: desc.forces_virial({"Si": dv}), repeats)

        def at(step):
            bias.step_count = step
            bias.step(query)

        out["step"] = best(lambda: at(stride + 1), repeats)
        out["deposit_step"] = best(lambda: at(stride), repeats)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(repeats):
            at(stride)
        profile.disable()
        stats = pstats.Stats(profile).stats

        def cumulative(*names):
            return sum(v[3] for k, v in stats.items() if k[2] in names) / repeats * 1e3

        out["profile"] = {"metrics": cumulative("_metric", "_metrics") if "_metrics" not in
                          {k[2] for k in stats} else cumulative("_metrics"),
                          "merges": cumulative("merge_into"), "file": cumulative("append"),
                          "nearest": cumulative("nearest"), "step": cumulative("step")}
        out["hills_at_end"] = len(bias.hills["Si"])
        bias.close()
    return out


def problems(result: dict) -> list[str]:
    """What is wrong with one run's ``result`` (the JSON printed by :func:`main`): a
    timed part (CPU or wall ms) not positive and finite, a deposition that costs no
    CPU time (a step that deposits not dearer than one that does not), a profile
    entry negative or not finite, or a hill count other than the cap. Empty if
    nothing is."""
    found = []
    for cap, parts in result["caps"].items():
        for name in TIMED:
            if not all(np.isfinite(x) and x > 0 for x in parts[name]):
                found.append(f"max_hills {cap}: {name} = {parts[name]} ms, not positive and finite")
        if not parts["deposit_step"][0] > parts["step"][0]:
            found.append(f"max_hills {cap}: a step that deposits took {parts['deposit_step'][0]:.3g} ms CPU, "
                         f"one that does not {parts['step'][0]:.3g} ms")
        for name, value in parts["profile"].items():
            if not (np.isfinite(value) and value >= 0):
                found.append(f"max_hills {cap}: profile {name} = {value} ms")
        if parts["hills_at_end"] != int(cap):
            found.append(f"max_hills {cap}: {parts['hills_at_end']} hills at the end")
    return found


def quick(tree: str) -> int:
    """bench_bias.py's parts table for ``tree`` at toy size (:data:`QUICK`); 0 if every
    measurement passed :func:`problems`, else 1 (their messages on stderr)."""
    import subprocess

    sys.path.insert(0, HERE)
    import bench_sections
    try:
        bench_sections.step_parts({"now": tree}, caps=QUICK["caps"], threads=QUICK["threads"],
                                  rounds=QUICK["rounds"], repeats=QUICK["repeats"])
    except subprocess.CalledProcessError as err:
        sys.stderr.write(err.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="root of the gmetad source tree to measure")
    parser.add_argument("--caps", default="300,1000")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="the parts table of bench_bias.py at toy size, checked (for CI)")
    args = parser.parse_args(argv)
    if args.quick:
        return quick(args.tree)
    sys.path.insert(0, os.path.abspath(args.tree))
    import biasserver
    assert os.path.dirname(os.path.abspath(biasserver.__file__)) == os.path.join(os.path.abspath(args.tree),
                                                                                  "biasserver"), biasserver.__file__
    result = {"tree": os.path.abspath(args.tree), "threads": int(os.environ["OMP_NUM_THREADS"]),
              "caps": {cap: measure(int(cap), args.repeats) for cap in args.caps.split(",")}}
    print(json.dumps(result), flush=True)
    found = problems(result)
    for message in found:
        print(f"step_parts.py: {message}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
