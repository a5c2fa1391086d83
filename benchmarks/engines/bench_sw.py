#!/usr/bin/env python
"""CPU time per call of the C Stillinger-Weber engine against matscipy's, on one frame.

    python benchmarks/engines/bench_sw.py [--frames /work/longrun4/combined.npz] [--index -1]

The frame (positions from key frames, cell from key cell, periodic) is evaluated by
both calculators: energy, forces and stress from fresh positions every call (the
calculators' caches are reset), in interleaved rounds, CPU time of the thread
(time.thread_time). Prints best and median ms per call, their ratio, the largest
differences between the two, the neighbours per atom and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]

from ase import Atoms  # noqa: E402

from biasserver.kernels import neighbour_list  # noqa: E402
from engines.stillinger_weber import StillingerWeberC, matscipy_parameters  # noqa: E402


def cpu_ms(atoms: Atoms, repeats: int) -> list[float]:
    """CPU ms of each of ``repeats`` full evaluations (cache reset before each)."""
    out = []
    for _ in range(repeats):
        atoms.calc.reset()
        t = time.thread_time()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        out.append((time.thread_time() - t) * 1e3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="/work/longrun4/combined.npz")
    parser.add_argument("--index", type=int, default=-1, help="frame (default: the last)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import StillingerWeber

    data = np.load(args.frames)
    positions = data["frames"][args.index]
    atoms = Atoms(f"Si{len(positions)}", positions=positions, cell=data["cell"], pbc=True)
    c, m = atoms.copy(), atoms.copy()
    c.calc = StillingerWeberC()
    m.calc = Manybody(**StillingerWeber(matscipy_parameters()))
    nl = neighbour_list(positions, data["cell"], True, c.calc.cutoff)
    counts = np.diff(nl.offset)
    times = {"c": [], "matscipy": []}
    for _ in range(args.rounds):   # interleaved: both see the same load
        times["c"] += cpu_ms(c, 20)
        times["matscipy"] += cpu_ms(m, 2)
    parts = {"neighbour list": [], "calculate": []}
    for _ in range(100):
        t = time.thread_time()
        neighbour_list(positions, data["cell"], True, c.calc.cutoff)
        parts["neighbour list"].append((time.thread_time() - t) * 1e3)
        t = time.thread_time()
        c.calc.calculate(c, ["energy", "forces", "stress"], ["positions"])
        parts["calculate"].append((time.thread_time() - t) * 1e3)
    print(f"{args.frames} frame {args.index}: {len(atoms)} atoms, neighbours within a sigma = "
          f"{c.calc.cutoff:.3f} A: mean {counts.mean():.1f}, max {counts.max()}")
    print(f"energy difference {abs(c.get_potential_energy() - m.get_potential_energy()):.1e} eV, "
          f"forces {np.abs(c.get_forces() - m.get_forces()).max():.1e} eV/A, "
          f"stress {np.abs(c.get_stress() - m.get_stress()).max():.1e} eV/A^3")
    for name, t in times.items():
        print(f"{name:9s} CPU ms per call: best {min(t):.3f}, median {statistics.median(t):.3f} ({len(t)} calls)")
    print("c engine parts, CPU ms best / median: " + ", ".join(
        f"{k} {min(v):.3f} / {statistics.median(v):.3f}" for k, v in parts.items())
        + " (calculate: neighbour list + sw_compute; the rest of a call is ASE's bookkeeping)")
    print(f"ratio matscipy / c: best {min(times['matscipy']) / min(times['c']):.0f}, "
          f"median {statistics.median(times['matscipy']) / statistics.median(times['c']):.0f}; "
          f"load average {open('/proc/loadavg').read().split()[0]}")


if __name__ == "__main__":
    main()
