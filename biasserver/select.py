"""``gmetad select``: pick a training subset from recorded frames.

First every ``stride``-th frame is kept; then, optionally, ``n`` frames are chosen
by farthest-point sampling of local environments: each step adds the frame whose
least-covered atom lies farthest (in standardised symmetry-function space, per
element) from every atom of the frames chosen so far. The subset thus covers the
atomic environments of the run, which is what an MLP training set needs.
"""
from __future__ import annotations

import sys

import numpy as np
from ase import Atoms
from ase.io import read, write

from .symmetry import SymmetryFunctions


def environment_fps(frames: list[Atoms], symmetry_functions: SymmetryFunctions, n: int,
                    first: int = 0) -> list[int]:
    """Indices of ``n`` frames chosen by farthest-point sampling of atomic environments.

    Distances are Euclidean in G space after scaling every function by its standard
    deviation over all atoms of that element. Starts from frame ``first``.
    """
    if n <= 0 or not frames:
        return []
    n = min(n, len(frames))
    per_element: dict[str, list[np.ndarray]] = {e: [] for e in symmetry_functions.elements}
    owner: dict[str, list[np.ndarray]] = {e: [] for e in symmetry_functions.elements}
    for k, atoms in enumerate(frames):
        for element, values in symmetry_functions.values(atoms).items():
            per_element[element].append(values)
            owner[element].append(np.full(len(values), k))
    envs, frame_of = {}, {}
    for e in symmetry_functions.elements:
        if not per_element[e] or sum(len(v) for v in per_element[e]) == 0:
            continue
        g = np.concatenate(per_element[e])
        scale = g.std(axis=0)
        scale[scale == 0] = 1.0
        envs[e] = g / scale
        frame_of[e] = np.concatenate(owner[e])
    nearest = {e: np.full(len(g), np.inf) for e, g in envs.items()}
    chosen = [first]
    while len(chosen) < n:
        latest = chosen[-1]
        novelty = np.zeros(len(frames))
        for e, g in envs.items():
            new = g[frame_of[e] == latest]
            if len(new):
                d2 = ((g[:, None, :] - new[None, :, :]) ** 2).sum(axis=2).min(axis=1)
                np.minimum(nearest[e], d2, out=nearest[e])
            np.maximum.at(novelty, frame_of[e], nearest[e])
        novelty[chosen] = -1.0
        best = int(np.argmax(novelty))
        if novelty[best] <= 0:
            break               # every remaining frame repeats chosen environments exactly
        chosen.append(best)
    return chosen


def main(args) -> int:
    frames = read(args.frames, ":")
    if args.stride < 1:
        raise ValueError(f"--stride must be >= 1, got {args.stride}")
    kept = list(range(0, len(frames), args.stride))
    if args.fps:
        if args.config:
            from .config import load
            sf = load(args.config).symmetry_functions()
        else:
            elements = sorted({s for f in frames for s in f.get_chemical_symbols()})
            sf = SymmetryFunctions.default(elements)
        subset = [frames[k] for k in kept]
        kept = [kept[k] for k in sorted(environment_fps(subset, sf, args.fps))]
    write(args.output, [frames[k] for k in kept], format="extxyz")
    print(f"selected {len(kept)} of {len(frames)} frames -> {args.output}", file=sys.stderr)
    return 0
