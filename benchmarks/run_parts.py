#!/usr/bin/env python
"""The parts of the bias's cost per MD step in a real biased run, where step_parts.py
measures them on a fixed structure.

A Si64 G-metaD as benchmarks/long_run.py runs it (C Stillinger-Weber, Langevin at
--temperature, 1 fs, h = 1 meV, adaptive sigma 1 A, stride 20, compression
--compression, max_hills --max-hills, seed --seed) for --steps steps, with the
parts of GMetaDBias.step timed in place (wall time, summed over the run and divided
by the number of MD steps; nested parts are inside their parent):

- ``step``: the whole GMetaDBias.step;
- ``symmetry functions``: values and derivatives (neighbour list included);
- ``hills``: V and dV/dG (HillSet.evaluate, the deposition's nearest hills included);
- ``forces``: forces and virial from dV/dG;
- ``deposition``: apply_candidates (merges, records, the hills file) plus the
  candidates' metrics (J J^T, covariances), and within it ``merges``
  (_apply_group) and ``hills file``;
- ``bounds``: eigenvalue bounds of the hills changed by a deposition.

The run's structures are what a biased run visits (disordered, 40-50 neighbours
within the 6 A cutoff, unevenly spread), so the symmetry functions cost more than
on step_parts.py's displaced diamond. OMP_NUM_THREADS sets the kernels' threads.

    OMP_NUM_THREADS=2 python benchmarks/run_parts.py --steps 4000
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from long_run import HEIGHT, STRIDE, WIDTH, langevin, sw_calculator  # noqa: E402

#: (label, object name, attribute) of every timed part, in print order
PARTS = [("step", "bias", "step"), ("symmetry functions", "bias", "_descriptors"),
         ("hills", "hills", "evaluate"), ("forces", "descriptors", "forces_virial"),
         ("deposition: metrics", "bias", "_candidates"), ("deposition: apply", "bias", "apply_candidates"),
         ("  merges", "bias", "_apply_group"), ("  hills file", "writer", "append"),
         ("bounds", "hills", "_update_bounds")]


def timed(owner, attribute: str, label: str, totals: dict) -> None:
    """Replace owner.attribute by a wrapper adding its wall time to totals[label]."""
    plain = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return plain(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - t

    setattr(owner, attribute, wrapper)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--max-hills", type=int, default=300)
    parser.add_argument("--compression", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=500.0, help="K")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from ase.build import bulk

    from biasserver.bias import GMetaDBias
    from biasserver.calculator import GMetaDCalculator
    from biasserver.symmetry import Descriptors, SymmetryFunctions

    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        bias = GMetaDBias(SymmetryFunctions.default(["Si"]), height=HEIGHT, width=WIDTH, stride=STRIDE,
                          species={"Si": 1.0}, compression=args.compression, max_hills=args.max_hills,
                          hills_file=os.path.join(tmp, "HILLS"))
        owners = {"bias": bias, "hills": bias.hills["Si"], "descriptors": Descriptors, "writer": bias._writer}
        totals: dict[str, float] = {}
        for label, owner, attribute in PARTS:
            timed(owners[owner], attribute, label, totals)
        atoms.calc = GMetaDCalculator(sw_calculator("c"), bias)
        dyn = langevin(atoms, args.temperature, rng)
        start = time.perf_counter()
        dyn.run(args.steps)
        wall = time.perf_counter() - start
        bias.close()
    n = args.steps + 1      # the calculator is called once before the first step
    print(f"{args.steps} steps, {os.environ['OMP_NUM_THREADS']} OpenMP thread(s), compression {args.compression:g}, "
          f"max_hills {args.max_hills}: {wall / args.steps * 1e3:.2f} ms per MD step in all, "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| part | wall ms per MD step |")
    print("|---|---|")
    for label, _, _ in PARTS:
        print(f"| {label} | {totals.get(label, 0.0) / n * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
