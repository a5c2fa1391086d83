"""Coverage of atomic environments: how many distinct local environments a run visited.

One measure for the studies, the benchmarks and ``gmetad select``: per element,
every atom's symmetry-function vector G is standardised with the mean and standard
deviation of a fixed reference set (for a study, its low-temperature MD run), then
the environments are counted by a greedy covering at radius ``r``: taken in order,
an environment starts a new centre when it lies farther than ``r`` from every
centre so far. The number of centres against simulated time says how much of
environment space a sampler has explored; the same reference and radius must be
used for all runs that are compared.

Distances are Euclidean in standardised G (dimensionless: units of the reference
set's standard deviation of each function).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from ase import Atoms

from .symmetry import SymmetryFunctions

#: default covering radius, in reference standard deviations
DEFAULT_RADIUS = 1.0


class Coverage:
    """Incremental greedy covering of standardised environments, per element.

    mean, std: per element, the reference set's mean and standard deviation of each
    function (functions with zero spread are scaled by 1); radius: the covering
    radius r (dimensionless).
    """

    def __init__(self, mean: Mapping[str, np.ndarray], std: Mapping[str, np.ndarray],
                 radius: float = DEFAULT_RADIUS):
        if not radius > 0:
            raise ValueError(f"coverage radius must be > 0, got {radius}")
        self.radius = float(radius)
        self.mean = {e: np.asarray(m, dtype=float) for e, m in mean.items()}
        self.scale = {}
        for e, s in std.items():
            s = np.array(s, dtype=float)
            s[~(s > 0)] = 1.0
            self.scale[e] = s
        self.centres: dict[str, np.ndarray] = {e: np.empty((0, len(m))) for e, m in self.mean.items()}

    @classmethod
    def from_reference(cls, environments: Mapping[str, np.ndarray], radius: float = DEFAULT_RADIUS) -> "Coverage":
        """A covering standardised by a reference set: {element: (n, D) G values}."""
        return cls({e: g.mean(axis=0) for e, g in environments.items() if len(g)},
                   {e: g.std(axis=0) for e, g in environments.items() if len(g)}, radius)

    def add(self, environments: Mapping[str, np.ndarray]) -> int:
        """Cover the environments {element: (n, D) G values}, in order; returns the
        number of new centres. Elements without a reference are ignored."""
        new = 0
        r2 = self.radius**2
        for e, g in environments.items():
            if e not in self.mean or len(g) == 0:
                continue
            x = (np.asarray(g, dtype=float) - self.mean[e]) / self.scale[e]
            centres = self.centres[e]
            if len(centres):
                x = x[_farther_than(x, centres, r2)]
            added = []
            for point in x:   # the few not covered yet: greedy among themselves
                if not added or min(((point - c) ** 2).sum() for c in added) > r2:
                    added.append(point)
            if added:
                self.centres[e] = np.concatenate([centres, np.array(added)])
                new += len(added)
        return new

    def count(self, element: str | None = None) -> int:
        """Number of centres (of one element, or of all)."""
        if element is not None:
            return len(self.centres[element])
        return sum(len(c) for c in self.centres.values())


def environments(frames: Iterable[Atoms], symmetry_functions: SymmetryFunctions) -> dict[str, np.ndarray]:
    """All atoms' G values of ``frames``, stacked per element: {element: (n, D)}."""
    stacks: dict[str, list[np.ndarray]] = {e: [] for e in symmetry_functions.elements}
    for atoms in frames:
        for e, g in symmetry_functions.values(atoms).items():
            stacks[e].append(g)
    return {e: np.concatenate(v) if v else np.empty((0, symmetry_functions.size(e)))
            for e, v in stacks.items()}


#: centres per block of the distance screening (bounds its temporaries: rows x 32768 doubles)
_BLOCK = 32768


def _farther_than(x: np.ndarray, centres: np.ndarray, r2: float) -> np.ndarray:
    """(n,) whether each row of x lies farther than sqrt(r2) from every centre, decided
    as the direct sum of squared differences decides it.

    The distances are screened as |x|^2 + |c|^2 - 2 x.c (one matrix product per block
    of centres, where the direct form would build an (n, C, D) array); the rounding of
    both forms is far below ``margin``, and rows whose screened distance lies within
    ``margin`` of r2 are decided by the direct sum, so the result does not depend on
    the screening."""
    x2 = np.einsum("ij,ij->i", x, x)
    lowest = np.full(len(x), np.inf)
    largest_c2 = 0.0
    for start in range(0, len(centres), _BLOCK):
        c = centres[start:start + _BLOCK]
        c2 = np.einsum("ij,ij->i", c, c)
        largest_c2 = max(largest_c2, float(c2.max()))
        np.minimum(lowest, (x2[:, None] + c2[None, :] - 2.0 * (x @ c.T)).min(axis=1), out=lowest)
    margin = 1e-9 * (x2 + largest_c2 + r2)
    farther = lowest > r2
    for i in np.flatnonzero(np.abs(lowest - r2) <= margin):
        farther[i] = ((x[i] - centres) ** 2).sum(axis=1).min() > r2
    return farther


def coverage_curve(frames: Iterable[Atoms], symmetry_functions: SymmetryFunctions, reference: Coverage) -> np.ndarray:
    """Number of centres after each frame, covering ``frames`` in order with a fresh
    covering standardised as ``reference`` (its centres are not reused)."""
    covering = Coverage(reference.mean, reference.scale, reference.radius)
    counts = []
    for atoms in frames:
        covering.add(symmetry_functions.values(atoms))
        counts.append(covering.count())
    return np.array(counts, dtype=int)
