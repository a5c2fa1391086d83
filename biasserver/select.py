"""``gmetad select``: pick a training subset from recorded frames.

The frames come from one or more files, e.g. one per walker of a walkers job
(``gmetad select w0/frames.extxyz w1/frames.extxyz``), or from run folders: a
folder stands for its walkers' files ``walker-<r>/frames.extxyz`` (the layout of
``gmetad run`` with walkers), else for its ``frames.walker-<r>.extxyz`` files
(``gmetad serve`` with walkers and an unnumbered ``recorder.path``), else for its
``frames.extxyz``. Each frame keeps its ``walker``, ``step`` and ``bead`` fields.

First every ``stride``-th frame of each file is kept; then, optionally, ``n`` frames are chosen
by farthest-point sampling of local environments: each step adds the frame whose
least-covered atom lies farthest (in standardised symmetry-function space, per
element) from every atom of the frames chosen so far. The subset thus covers the
atomic environments of the run, which is what an MLP training set needs.
"""
from __future__ import annotations

import os
import re
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


class SelectError(ValueError):
    """A frames file or folder that cannot be selected from; the message names it."""


def walker_index(path: str) -> int:
    """r in ``walker-<r>`` or ``.walker-<r>.`` of ``path`` (the sorting key of a run's files)."""
    found = re.findall(r"walker-(\d+)", path)
    return int(found[-1]) if found else -1


def frames_files(sources: list[str]) -> list[str]:
    """The frames files the command-line ``sources`` name, in order (a folder: its
    walkers' files in walker order, see the module docstring)."""
    files = []
    for source in sources:
        if not os.path.isdir(source):
            if not os.path.exists(source):
                raise SelectError(f"{source}: no such frames file or run folder")
            files.append(source)
            continue
        found = [os.path.join(source, name, "frames.extxyz") for name in os.listdir(source)
                 if re.fullmatch(r"walker-\d+", name) and os.path.isfile(os.path.join(source, name, "frames.extxyz"))]
        if not found:
            found = [os.path.join(source, name) for name in os.listdir(source)
                     if re.fullmatch(r"frames\.walker-\d+\.extxyz", name)]
        if not found and os.path.isfile(os.path.join(source, "frames.extxyz")):
            found = [os.path.join(source, "frames.extxyz")]
        if not found:
            raise SelectError(f"{source}: a folder without frames (no walker-<r>/frames.extxyz, "
                              "frames.walker-<r>.extxyz or frames.extxyz in it)")
        files.extend(sorted(found, key=walker_index))
    return files


def read_frames(path: str) -> list[Atoms]:
    """Every frame of one extxyz file; a SelectError naming it when it has none or
    is not a frames file."""
    try:
        frames = read(path, ":", format="extxyz")
    except Exception as err:   # ASE raises many kinds for files it cannot parse
        raise SelectError(f"{path}: not an extxyz frames file ({type(err).__name__}: {err})") from None
    if not frames:
        raise SelectError(f"{path}: holds no frames")
    return frames


def main(args) -> int:
    if args.stride < 1:
        raise SelectError(f"--stride must be >= 1, got {args.stride}")
    files = frames_files(args.frames)
    frames, kept, counts = [], [], []
    for path in files:
        these = read_frames(path)
        kept.extend(range(len(frames), len(frames) + len(these), args.stride))
        counts.append(len(these))
        frames.extend(these)
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
    if len(files) > 1:
        starts = np.cumsum([0] + counts)
        chosen = np.array(kept, dtype=np.int64)
        per_file = ", ".join(f"{path}: {int(((chosen >= a) & (chosen < b)).sum())} of {b - a}"
                             for path, a, b in zip(files, starts[:-1], starts[1:]))
        print(f"selected {len(kept)} of {len(frames)} frames -> {args.output} ({per_file})", file=sys.stderr)
    else:
        print(f"selected {len(kept)} of {len(frames)} frames -> {args.output}", file=sys.stderr)
    return 0
