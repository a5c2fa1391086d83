"""Gaussian hills in symmetry-function space: storage, pruned evaluation, merging.

One :class:`HillSet` holds the hills of one element. A hill s has a height h_s
(eV), a centre mu_s (a symmetry-function vector, dimensionless) and a metric A_s
(the inverse covariance; adaptive hills store the full D x D matrix, isotropic
hills the scalar 1/sigma_G^2):

    V(g) = sum_s h_s exp(-(g - mu_s)^T A_s (g - mu_s) / 2)

Evaluation runs in C (ckernels/gaussians.c) over blocks of nearby hills, so blocks
far from the query are skipped with a rigorous bound and the cost grows slower
than the number of hills once they spread out. The blocks are the leaves of a k-d
tree updated incrementally (:class:`BlockTree`): adding or changing a hill costs
O(log N + BLOCK_SIZE D), whatever the number of hills N. The tree is a
deterministic function of the sequence of add() and replace() calls, so a set
rebuilt from a hills file (which replays them) evaluates bit-identically to the
one that wrote it.
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


class BlockTree:
    """Pruning blocks of a growing set of hills: the leaves of a k-d tree, updated
    one hill at a time.

    A new hill descends the tree (left when its centre's coordinate on the node's
    axis is below the node's split value) to a leaf; a leaf that would exceed
    BLOCK_SIZE hills is split at the median of its coordinate of largest spread
    (the lower half keeps the leaf's number, the upper half becomes a new leaf).
    A changed hill (a merge) stays in its leaf. After every change the leaf's
    centre (mean of its centres), radius and smallest metric eigenvalue bound are
    recomputed from its members, so the bounds the kernel uses stay rigorous. Leaf
    b's hills are order[b * BLOCK_SIZE : b * BLOCK_SIZE + count[b]].
    """

    def __init__(self, dimension: int):
        self.dimension = dimension
        self.n_leaves = 1
        self.order = np.zeros(16 * BLOCK_SIZE, dtype=np.int32)
        self.count = np.zeros(16, dtype=np.int32)
        self.centre = np.zeros((16, dimension))
        self.radius = np.zeros(16)
        self.min_eig = np.zeros(16)
        self.leaf_of = np.zeros(16, dtype=np.int64)    # hill -> leaf
        # internal nodes: split axis and value, children (>= 0 a node, < 0 leaf -1 - child)
        self.axis: list[int] = []
        self.value: list[float] = []
        self.children: list[list[int]] = []
        self.root = -1                                   # leaf 0
        self.parent = [(-1, 0)]                          # leaf -> (node, side); -1: root

    def _grow_leaves(self) -> None:
        cap = 2 * len(self.count)
        order = np.zeros(cap * BLOCK_SIZE, dtype=np.int32)
        order[: len(self.order)] = self.order
        self.order = order
        for name in ("count", "centre", "radius", "min_eig"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def members(self, leaf: int) -> np.ndarray:
        start = leaf * BLOCK_SIZE
        return self.order[start: start + self.count[leaf]]

    def _set_members(self, leaf: int, members, centres: np.ndarray, min_eig: np.ndarray) -> None:
        members = np.asarray(members, dtype=np.int32)
        start = leaf * BLOCK_SIZE
        self.order[start: start + len(members)] = members
        self.count[leaf] = len(members)
        self.leaf_of[members] = leaf
        self.refresh(leaf, centres, min_eig)

    def refresh(self, leaf: int, centres: np.ndarray, min_eig: np.ndarray) -> None:
        """Recompute the centre, radius and eigenvalue bound of one leaf."""
        members = self.members(leaf)
        if len(members) == 0:
            return
        points = centres[members]
        centre = points.mean(axis=0)
        self.centre[leaf] = centre
        # round-off margin so the bound stays rigorous
        self.radius[leaf] = np.sqrt(((points - centre) ** 2).sum(axis=1).max()) * (1 + 1e-12) + 1e-12
        self.min_eig[leaf] = min_eig[members].min()

    def insert(self, hill: int, centres: np.ndarray, min_eig: np.ndarray) -> None:
        """Add hill ``hill`` (its centre and bound already stored in the arrays)."""
        if hill >= len(self.leaf_of):
            grown = np.zeros(max(2 * len(self.leaf_of), hill + 1), dtype=np.int64)
            grown[: len(self.leaf_of)] = self.leaf_of
            self.leaf_of = grown
        point = centres[hill]
        node = self.root
        while node >= 0:
            node = self.children[node][0 if point[self.axis[node]] < self.value[node] else 1]
        leaf = -1 - node
        members = self.members(leaf)
        if len(members) < BLOCK_SIZE:
            self._set_members(leaf, np.append(members, hill), centres, min_eig)
            return
        # split: the lower half stays in this leaf, the upper half is a new leaf
        members = np.append(members, hill)
        points = centres[members]
        axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
        ranked = members[np.argsort(points[:, axis], kind="stable")]
        half = len(ranked) // 2
        if self.n_leaves == len(self.count):
            self._grow_leaves()
        new_leaf = self.n_leaves
        self.n_leaves += 1
        node = len(self.axis)
        self.axis.append(axis)
        self.value.append(float(centres[ranked[half], axis]))
        self.children.append([-1 - leaf, -1 - new_leaf])
        up, side = self.parent[leaf]
        if up < 0:
            self.root = node
        else:
            self.children[up][side] = node
        self.parent[leaf] = (node, 0)
        self.parent.append((node, 1))
        self._set_members(leaf, ranked[:half], centres, min_eig)
        self._set_members(new_leaf, ranked[half:], centres, min_eig)

    def arrays(self):
        """(order, first, count, centre, radius, min_eig) for the C kernel."""
        n = self.n_leaves
        first = np.arange(n, dtype=np.int32) * BLOCK_SIZE
        return (self.order, first, self.count[:n], self.centre[:n], self.radius[:n], self.min_eig[:n])


def blocks_from_leaves(leaves: list[np.ndarray], centres: np.ndarray, min_eig: np.ndarray):
    """Kernel block arrays (order, first, count, centre, radius, min_eig) of the given
    index sets (used to rebuild the blocks from scratch)."""
    order = np.concatenate(leaves).astype(np.int32)
    count = np.array([len(leaf) for leaf in leaves], dtype=np.int32)
    first = np.zeros(len(leaves), dtype=np.int32)
    np.cumsum(count[:-1], out=first[1:])
    block_centre = np.array([centres[leaf].mean(axis=0) for leaf in leaves])
    radius = np.array([np.sqrt(((centres[leaf] - c) ** 2).sum(axis=1).max())
                       for leaf, c in zip(leaves, block_centre)])
    radius = radius * (1 + 1e-12) + 1e-12
    block_min_eig = np.array([min_eig[leaf].min() for leaf in leaves])
    return order, first, count, block_centre, radius, block_min_eig


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
        self._tree = BlockTree(self.dimension) if self.q_cut > 0 else None

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
        self._store(s, centre, height, metric, step)
        self._n += 1
        if self._tree is not None:
            self._tree.insert(s, self._centres, self._min_eig)
        return s

    def replace(self, index: int, centre: np.ndarray, height: float, metric, step: int) -> None:
        """Overwrite hill ``index`` (used by merging and by loading a hills file)."""
        if not 0 <= index < self._n:
            raise IndexError(f"hill {index} does not exist ({self._n} hills)")
        self._store(index, centre, height, metric, step)
        if self._tree is not None:
            self._tree.refresh(int(self._tree.leaf_of[index]), self._centres, self._min_eig)

    def _store(self, index: int, centre, height: float, metric, step: int) -> None:
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

    # -- evaluation ---------------------------------------------------------
    def evaluate(self, queries: np.ndarray, gradient: bool = True):
        """V and dV/dg at each row of ``queries`` (Q, D). Returns (V (Q,), dV (Q, D), n evaluated)."""
        queries = np.asarray(queries, dtype=np.float64).reshape(-1, self.dimension)
        if self._n == 0:
            return np.zeros(len(queries)), np.zeros_like(queries) if gradient else None, 0
        return kernels.gaussian_sum(queries, **self._kernel_arguments(), gradient=gradient)

    def nearest(self, queries: np.ndarray):
        """For each row of ``queries`` (Q, D): V there, the index of the hill with the
        smallest q_s = (g - mu_s)^T A_s (g - mu_s) among those the pruning keeps, and
        that q (-1 and inf when every hill is pruned, i.e. all have q > q_cut).
        Returns (V (Q,), index (Q,), q (Q,)); one evaluation without gradients."""
        queries = np.asarray(queries, dtype=np.float64).reshape(-1, self.dimension)
        if self._n == 0:
            return np.zeros(len(queries)), np.full(len(queries), -1), np.full(len(queries), np.inf)
        v, _, _, (index, q) = kernels.gaussian_sum(queries, **self._kernel_arguments(),
                                                  gradient=False, nearest=True)
        return v, index, q

    def _kernel_arguments(self) -> dict:
        return dict(centres=self.centres, heights=self.heights,
                    inv_cov=self.metrics if self.adaptive else None,
                    inv_var=None if self.adaptive else self.metrics,
                    min_eig=self._min_eig[: self._n], blocks=self.blocks(), q_cut=self.q_cut)

    def mahalanobis2(self, point: np.ndarray) -> np.ndarray:
        """q_s = (point - mu_s)^T A_s (point - mu_s) for every hill (used by merging)."""
        diff = point[None, :] - self.centres
        if self.adaptive:
            return np.einsum("sd,sde,se->s", diff, self.metrics, diff)
        return self.metrics * np.einsum("sd,sd->s", diff, diff)

    def blocks(self):
        """The pruning blocks as the kernel takes them, (order, first, count, centre,
        radius, min_eig), or None when pruning is off. Kept up to date by add() and
        replace() (see :class:`BlockTree`); nothing is rebuilt at evaluation."""
        return None if self._tree is None else self._tree.arrays()

    def rebuilt_blocks(self):
        """The blocks built from scratch by recursive median splits of all current
        centres (what the incremental tree approximates; for tests and benchmarks)."""
        if self._n == 0 or self.q_cut <= 0:
            return None
        return blocks_from_leaves(kd_leaves(self.centres, BLOCK_SIZE), self.centres,
                                  self._min_eig[: self._n])

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
