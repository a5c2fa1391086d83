"""Gaussian hills in symmetry-function space: storage, pruned evaluation, merging.

One :class:`HillSet` holds the hills of one element. A hill s has a height h_s
(eV), a centre mu_s (a symmetry-function vector, dimensionless) and a metric A_s
(the inverse covariance; adaptive hills store the full D x D matrix, isotropic
hills the scalar 1/sigma_G^2):

    V(g) = sum_s h_s exp(-(g - mu_s)^T A_s (g - mu_s) / 2)

Evaluation runs in C (ckernels/gaussians.c) over blocks of nearby hills, so blocks
far from the query are skipped with a rigorous bound and the cost grows slower
than the number of hills once they spread out. The block structure is a
deterministic function of the stored hills, so a set rebuilt from a hills file
evaluates bit-identically to the one that wrote it.
"""
from __future__ import annotations

import numpy as np

from . import kernels

#: Hills whose weight exp(-q/2) is below this fraction of their height are pruned.
DEFAULT_PRUNE_TOLERANCE = 1e-12
#: Maximum number of hills in one pruning block.
BLOCK_SIZE = 32


def metric_lower_bound(metric: np.ndarray) -> float:
    """A rigorous lower bound of the smallest eigenvalue of a (D, D) metric, or of a scalar one."""
    if np.ndim(metric) == 0:
        return float(metric)
    smallest = float(np.linalg.eigvalsh(metric)[0])
    # eigvalsh is accurate to ~eps * |A|; step down by more than that
    return max(0.0, smallest - 1e-12 * float(np.abs(metric).max()))


def kd_leaves(points: np.ndarray, leaf_size: int) -> list[np.ndarray]:
    """Index sets of the leaves of recursive median splits along the coordinate of
    largest spread (a k-d tree's leaves), each of at most ``leaf_size`` points, in
    a deterministic order."""
    leaves, stack = [], [np.arange(len(points))]
    while stack:
        idx = stack.pop()
        if len(idx) <= leaf_size:
            leaves.append(idx)
            continue
        sub = points[idx]
        axis = int(np.argmax(sub.max(axis=0) - sub.min(axis=0)))
        order = np.argsort(sub[:, axis], kind="stable")
        half = len(idx) // 2
        stack.append(idx[order[half:]])
        stack.append(idx[order[:half]])
    return leaves


class HillSet:
    """The hills of one element, with D-dimensional centres.

    adaptive: True for full inverse covariances, False for isotropic hills.
    """

    def __init__(self, dimension: int, adaptive: bool, prune_tolerance: float = DEFAULT_PRUNE_TOLERANCE):
        if dimension <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = int(dimension)
        self.adaptive = bool(adaptive)
        self.q_cut = -2.0 * np.log(prune_tolerance) if prune_tolerance > 0 else 0.0
        self._n = 0
        self._centres = np.empty((0, dimension))
        self._heights = np.empty(0)
        self._metrics = np.empty((0, dimension, dimension)) if adaptive else np.empty(0)
        self._min_eig = np.empty(0)
        self._steps = np.empty(0, dtype=np.int64)
        self._blocks = None

    # -- storage ------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def centres(self) -> np.ndarray:
        return self._centres[: self._n]

    @property
    def heights(self) -> np.ndarray:
        return self._heights[: self._n]

    @property
    def metrics(self) -> np.ndarray:
        return self._metrics[: self._n]

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n]

    def _grow(self) -> None:
        capacity = max(16, 2 * len(self._heights))
        def grown(a):
            out = np.empty((capacity,) + a.shape[1:], dtype=a.dtype)
            out[: self._n] = a[: self._n]
            return out
        self._centres, self._heights = grown(self._centres), grown(self._heights)
        self._metrics, self._min_eig = grown(self._metrics), grown(self._min_eig)
        self._steps = grown(self._steps)

    def add(self, centre: np.ndarray, height: float, metric, step: int) -> int:
        """Append a hill; returns its index. metric: (D, D) or a scalar 1/sigma^2."""
        if self._n == len(self._heights):
            self._grow()
        s = self._n
        self._n += 1
        self.replace(s, centre, height, metric, step)
        return s

    def replace(self, index: int, centre: np.ndarray, height: float, metric, step: int) -> None:
        """Overwrite hill ``index`` (used by merging and by loading a hills file)."""
        centre = np.asarray(centre, dtype=np.float64)
        if centre.shape != (self.dimension,):
            raise ValueError(f"hill centre has {centre.size} values, expected {self.dimension}")
        metric = np.asarray(metric, dtype=np.float64)
        if metric.shape != ((self.dimension, self.dimension) if self.adaptive else ()):
            raise ValueError(f"hill metric has shape {metric.shape} for a "
                             f"{'adaptive' if self.adaptive else 'isotropic'} hill of dimension {self.dimension}")
        if not (np.isfinite(height) and np.all(np.isfinite(centre)) and np.all(np.isfinite(metric))):
            raise ValueError("hill height, centre and metric must be finite")
        self._centres[index] = centre
        self._heights[index] = height
        self._metrics[index] = metric
        self._min_eig[index] = metric_lower_bound(metric)
        self._steps[index] = step
        self._blocks = None

    # -- evaluation ---------------------------------------------------------
    def evaluate(self, queries: np.ndarray, gradient: bool = True):
        """V and dV/dg at each row of ``queries`` (Q, D). Returns (V (Q,), dV (Q, D), n evaluated)."""
        queries = np.asarray(queries, dtype=np.float64).reshape(-1, self.dimension)
        if self._n == 0:
            return np.zeros(len(queries)), np.zeros_like(queries) if gradient else None, 0
        return kernels.gaussian_sum(
            queries, self.centres, self.heights,
            inv_cov=self.metrics if self.adaptive else None,
            inv_var=None if self.adaptive else self.metrics,
            min_eig=self._min_eig[: self._n], blocks=self.blocks(), q_cut=self.q_cut,
            gradient=gradient)

    def mahalanobis2(self, point: np.ndarray) -> np.ndarray:
        """q_s = (point - mu_s)^T A_s (point - mu_s) for every hill (used by merging)."""
        diff = point[None, :] - self.centres
        if self.adaptive:
            return np.einsum("sd,sde,se->s", diff, self.metrics, diff)
        return self.metrics * np.einsum("sd,sd->s", diff, diff)

    def blocks(self):
        """(order, start, centre, radius, min_eig) of the pruning blocks, built on demand.

        Recursive median splits along the coordinate of largest spread (a k-d tree's
        leaves), down to BLOCK_SIZE hills: compact blocks whose bounding spheres let
        the C kernel skip whole groups of far hills.
        """
        if self._blocks is None and self.q_cut > 0:
            centres = self.centres
            leaves = kd_leaves(centres, BLOCK_SIZE)
            order = np.concatenate(leaves).astype(np.int32)
            start = np.zeros(len(leaves) + 1, dtype=np.int32)
            np.cumsum([len(leaf) for leaf in leaves], out=start[1:])
            block_centre = np.array([centres[leaf].mean(axis=0) for leaf in leaves])
            radius = np.array([np.sqrt(((centres[leaf] - c) ** 2).sum(axis=1).max())
                               for leaf, c in zip(leaves, block_centre)])
            # round-off margin so the bound stays rigorous
            radius = radius * (1 + 1e-12) + 1e-12
            min_eig = np.array([self._min_eig[leaf].min() for leaf in leaves])
            self._blocks = (order, start, block_centre, radius, min_eig)
        return self._blocks

    # -- merging ------------------------------------------------------------
    def merge_into(self, index: int, centre: np.ndarray, height: float, metric, step: int) -> None:
        """Merge a new hill into hill ``index`` by moment matching (as OPES compresses kernels).

        Heights add; the merged centre is the height-weighted mean; the merged
        covariance is the height-weighted second moment minus the outer product of
        the mean. For a merge at Mahalanobis distance d the merged hill differs from
        the two it replaces by about d^2/8 of their summed height.
        """
        h0, h1 = float(self.heights[index]), float(height)
        mu0, mu1 = self.centres[index].copy(), np.asarray(centre, dtype=np.float64)
        h = h0 + h1
        mu = (h0 * mu0 + h1 * mu1) / h
        if self.adaptive:
            cov0 = np.linalg.inv(self.metrics[index])
            cov1 = np.linalg.inv(metric)
            cov = (h0 * (cov0 + np.outer(mu0, mu0)) + h1 * (cov1 + np.outer(mu1, mu1))) / h - np.outer(mu, mu)
            new_metric = np.linalg.inv(0.5 * (cov + cov.T))
            new_metric = 0.5 * (new_metric + new_metric.T)
        else:
            var = (h0 / self.metrics[index] + h1 / float(metric)) / h \
                + h0 * h1 / h**2 * float(np.sum((mu0 - mu1) ** 2)) / self.dimension
            new_metric = 1.0 / var
        self.replace(index, mu, h, new_metric, step)
