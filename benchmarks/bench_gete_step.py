"""Cost of one 64-atom GeTe MD step: CHGNet against the G-metaD bias, in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_gete_step.py RUN_DIR [--frames 20]

RUN_DIR is a finished G-metaD run of the GeTe study (``<run>/output/gmetad`` of
``studies.pipeline.sample``: ``frames.extxyz`` and ``HILLS``). Frames from its second
half are evaluated alternately by CHGNet (energy, forces, stress; one torch thread)
and by the bias with all of the run's hills (evaluation only, no deposition), so
both see the same load. Prints JSON: medians in s and the median ratio bias/CHGNet.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from ase.io import read

    from biasserver.bias import GMetaDBias
    from drivers.calculators import make_calculator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run folder (holding output/gmetad/frames.extxyz and HILLS)")
    ap.add_argument("--frames", type=int, default=20, help="frames to time (from the second half)")
    args = ap.parse_args(argv)
    variant = os.path.join(args.run, "output", "gmetad")
    frames = read(os.path.join(variant, "frames.extxyz"), ":")
    half = frames[len(frames) // 2:]
    picked = half[:: max(1, len(half) // (args.frames + 1))][: args.frames + 1]
    calc = make_calculator("chgnet")
    bias = GMetaDBias.load(os.path.join(variant, "HILLS"))
    bias.stride = 10**9                     # evaluate only: no deposition while timing
    reference, biased = [], []
    for atoms in picked:
        copy = atoms.copy()
        copy.calc = calc
        t = time.perf_counter()
        copy.get_forces()
        copy.get_stress()
        reference.append(time.perf_counter() - t)
        t = time.perf_counter()
        bias.step(atoms)
        biased.append(time.perf_counter() - t)
    r, b = np.array(reference[1:]), np.array(biased[1:])   # the first of each warms up
    print(json.dumps({"frames": len(r), "atoms": len(picked[0]), "hills": bias.n_hills,
                      "chgnet_median_s": float(np.median(r)), "bias_median_s": float(np.median(b)),
                      "ratio_bias_over_chgnet": float(np.median(b / r))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
