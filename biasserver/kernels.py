"""Thin numpy bindings over the C kernels (ckernels/gmetad.h).

Each function checks shapes and dtypes, passes contiguous float64/int arrays to
C as pointers and turns C error codes into Python exceptions. Units are those of
the inputs: the package feeds angstrom and eV.

The symmetry-function and hills kernels run AVX2 + FMA code on CPUs that have it
and baseline x86-64 code otherwise; ``GMETAD_KERNEL_ISA=sse2|avx2|auto`` in the
environment, or :func:`set_isa`, forces a path (results agree to round-off).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ._kernels import ffi, lib

PARAM_COLUMNS: int = int(lib.GM_PARAM_COLUMNS)

_ERRORS = {
    int(lib.GM_EINVAL): "invalid argument",
    int(lib.GM_ESINGULAR): "the cell is singular",
    int(lib.GM_ENOMEM): "out of memory",
}


def _check(code: int, what: str) -> None:
    if code < 0:
        raise ValueError(f"{what}: {_ERRORS.get(int(code), f'error {code}')}")


def _ptr(ctype: str, array: np.ndarray | None):
    """A contiguous array as the C array ``ctype`` ("double *", "int *", "long *")
    points to, or NULL (a typed buffer: no cast)."""
    return ffi.NULL if array is None else ffi.from_buffer(ctype.replace(" *", "[]"), array)


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


@dataclass(frozen=True)
class NeighbourList:
    """Full neighbour list (each pair listed from both atoms), sorted by centre.

    first, second: (P,) atom indices i and j (periodic images folded onto j);
    vectors: (P, 3) R_ij = r_j + image shift - r_i in angstrom;
    offset: (N + 1,) CSR offsets, the pairs of atom i are offset[i]:offset[i+1].
    """

    first: np.ndarray
    second: np.ndarray
    vectors: np.ndarray
    offset: np.ndarray

    @property
    def distances(self) -> np.ndarray:
        """(P,) pair distances in angstrom."""
        return np.sqrt(np.einsum("pk,pk->p", self.vectors, self.vectors))


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float) -> NeighbourList:
    """All pairs closer than ``cutoff`` (angstrom) with the C cell list.

    positions (N, 3) and cell (3, 3, rows are lattice vectors) in angstrom; pbc is
    three booleans. Non-periodic directions may have zero cell vectors: they are
    replaced by a vector orthogonal to the others, for binning only.
    """
    positions = _f64(positions)
    n_atoms = len(positions)
    if positions.shape != (n_atoms, 3):
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise ValueError(f"position of atom {bad} is not finite: {positions[bad]}")
    if not (cutoff > 0 and np.isfinite(cutoff)):
        raise ValueError(f"cutoff must be a positive number of angstrom, got {cutoff}")
    pbc_arr = np.ascontiguousarray(np.broadcast_to(np.asarray(pbc, dtype=bool), 3), dtype=np.int32)
    cell = _binning_cell(_f64(cell).reshape(3, 3), pbc_arr.astype(bool))
    capacity = max(16, n_atoms * 64)
    while True:
        first = np.empty(capacity, dtype=np.int32)
        second = np.empty(capacity, dtype=np.int32)
        vectors = np.empty((capacity, 3), dtype=np.float64)
        count = lib.gm_neighbours(n_atoms, _ptr("double *", positions), _ptr("double *", cell),
                                  _ptr("int *", pbc_arr), float(cutoff), capacity,
                                  _ptr("int *", first), _ptr("int *", second),
                                  _ptr("double *", vectors))
        _check(count, "neighbour search")
        if count <= capacity:
            break
        capacity = int(count)
    offset = np.zeros(n_atoms + 1, dtype=np.int64)
    np.cumsum(np.bincount(first[:count], minlength=n_atoms), out=offset[1:])
    # views, not copies: copying into fresh pages cost more than the search itself
    # (0.9 ms of 1.7 for Si512); the views keep at most 64 pair slots per atom
    # (exactly the pairs after a retry)
    return NeighbourList(first[:count], second[:count], vectors[:count], offset)


def _binning_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell, with degenerate non-periodic rows replaced by orthogonal unit vectors."""
    cell = cell.copy()
    for d in range(3):
        if pbc[d] and np.linalg.norm(cell[d]) == 0:
            raise ValueError(f"cell vector {d} is zero but the direction is periodic")
    if abs(np.linalg.det(cell)) > 1e-12 * max(1.0, np.abs(cell).max()) ** 3:
        return cell
    for d in range(3):
        if pbc[d]:
            continue
        others = [cell[e] for e in range(3) if e != d]
        normal = np.cross(others[0], others[1])
        if np.linalg.norm(normal) < 1e-12:
            # fewer than two independent vectors besides this one: use the axes
            normal = np.eye(3)[d]
        cell[d] = normal / np.linalg.norm(normal)
        if abs(np.linalg.det(cell)) > 1e-12:
            continue
    if abs(np.linalg.det(cell)) <= 1e-12:
        # fall back to axis vectors for every non-periodic direction
        for d in range(3):
            if not pbc[d]:
                cell[d] = np.eye(3)[d]
    if abs(np.linalg.det(cell)) <= 1e-12:
        raise ValueError("the periodic cell vectors are linearly dependent")
    return cell


def symmetry_functions(centres: np.ndarray, types: np.ndarray, neighbours: NeighbourList,
                       params: np.ndarray, derivatives: bool = True):
    """G2/G4/G5 values (and analytic derivatives) for centres of one element.

    params: (F, PARAM_COLUMNS) table. Returns (values (C, F), derivatives (P_c, F, 3)
    or None, pair_index (P_c,) indices into the neighbour list of the pairs whose
    derivative rows these are, in order).
    """
    centres = np.ascontiguousarray(centres, dtype=np.int32)
    types = np.ascontiguousarray(types, dtype=np.int32)
    params = _f64(params)
    n_funcs = len(params)
    counts = neighbours.offset[centres + 1] - neighbours.offset[centres]
    deriv_start = np.zeros(len(centres), dtype=np.int64)
    np.cumsum(counts[:-1], out=deriv_start[1:])
    values = np.empty((len(centres), n_funcs), dtype=np.float64)
    deriv = np.empty((int(counts.sum()), n_funcs, 3), dtype=np.float64) if derivatives else None
    code = lib.gm_symmetry_functions(
        len(centres), _ptr("int *", centres), _ptr("int *", types),
        _ptr("long *", neighbours.offset), _ptr("int *", neighbours.second),
        _ptr("double *", neighbours.vectors), n_funcs, _ptr("double *", params),
        _ptr("double *", values), _ptr("double *", deriv), _ptr("long *", deriv_start))
    _check(code, "symmetry functions")
    starts = neighbours.offset[centres]
    pair_index = (np.repeat(starts - deriv_start, counts) + np.arange(int(counts.sum()))).astype(np.int64)
    return values, deriv, pair_index


def gaussian_sum(query: np.ndarray, centres: np.ndarray, heights: np.ndarray,
                 inv_cov: np.ndarray | None = None, inv_var: np.ndarray | None = None,
                 min_eig: np.ndarray | None = None, blocks=None, q_cut: float = 0.0,
                 gradient: bool = True, nearest: bool = False):
    """V(g) = sum_s h_s exp(-q_s/2) and dV/dg at each query row (see gmetad.h).

    blocks: None, or (order, block_first, block_count, block_centre, block_radius,
    block_min_eig): block b holds hills order[first[b]:first[b] + count[b]].
    Returns (energy (Q,), gradient (Q, D) or None, number of (query, hill) pairs
    evaluated), and with nearest=True also (index (Q,), q (Q,)) of each query's
    nearest hill in the metric of that hill (-1, inf when every hill was pruned).
    """
    query = _f64(query)
    n_query, dim = query.shape
    centres = _f64(centres).reshape(-1, dim)
    n_hills = len(centres)
    heights = _f64(heights)
    inv_cov = None if inv_cov is None else _f64(inv_cov)
    inv_var = None if inv_var is None else _f64(inv_var)
    min_eig = None if min_eig is None else _f64(min_eig)
    energy = np.zeros(n_query)
    grad = np.zeros((n_query, dim)) if gradient else None
    near_index = np.empty(n_query, dtype=np.int32) if nearest else None
    near_q = np.empty(n_query) if nearest else None
    evaluated = ffi.new("long *")
    if blocks is None:
        n_blocks, order, first, count, bc, br, bm = 0, None, None, None, None, None, None
    else:
        order, first, count, bc, br, bm = blocks
        n_blocks = len(count)
        order = np.ascontiguousarray(order, dtype=np.int32)
        first = np.ascontiguousarray(first, dtype=np.int32)
        count = np.ascontiguousarray(count, dtype=np.int32)
        bc, br, bm = _f64(bc), _f64(br), _f64(bm)
    code = lib.gm_gaussian_sum(
        n_query, dim, _ptr("double *", query), n_hills, _ptr("double *", centres),
        _ptr("double *", heights), _ptr("double *", inv_cov), _ptr("double *", inv_var),
        _ptr("double *", min_eig), n_blocks, _ptr("int *", order), _ptr("int *", first),
        _ptr("int *", count), _ptr("double *", bc), _ptr("double *", br), _ptr("double *", bm),
        float(q_cut), _ptr("double *", energy), _ptr("double *", grad),
        _ptr("int *", near_index), _ptr("double *", near_q), evaluated)
    _check(code, "Gaussian sum")
    if nearest:
        return energy, grad, int(evaluated[0]), (near_index.astype(np.int64), near_q)
    return energy, grad, int(evaluated[0])


#: names of the code paths of the vector kernels (gm_set_isa)
ISAS = {"auto": int(lib.GM_ISA_AUTO), "sse2": int(lib.GM_ISA_BASELINE), "avx2": int(lib.GM_ISA_AVX2)}
#: environment variable read at import: auto (default), sse2 or avx2
ISA_VARIABLE = "GMETAD_KERNEL_ISA"


def set_isa(name: str) -> str:
    """Force the code path of the symmetry-function and hills kernels: "avx2" (AVX2
    + FMA), "sse2" (the baseline x86-64 build) or "auto" (AVX2 where the CPU has it,
    the default). Returns the path now in use; ValueError if it cannot run here.
    Process-wide: call it before kernels run in other threads."""
    if name not in ISAS:
        raise ValueError(f"kernel code path must be one of {', '.join(ISAS)}, got {name!r}")
    code = lib.gm_set_isa(ISAS[name])
    if code < 0:
        raise ValueError(f"the {name} code path of the kernels cannot run on this CPU or build")
    return isa()


def isa() -> str:
    """The code path the kernels use: "avx2" or "sse2"."""
    code = int(lib.gm_isa())
    return "avx2" if code == ISAS["avx2"] else "sse2"


def isa_available(name: str) -> bool:
    """Whether ``name`` ("auto", "sse2" or "avx2") can run on this CPU with this build."""
    return bool(lib.gm_isa_available(ISAS[name]))


def _isa_from_environment() -> None:
    name = os.environ.get(ISA_VARIABLE, "").strip().lower()
    if name:
        try:
            set_isa(name)
        except ValueError as err:
            raise ValueError(f"environment variable {ISA_VARIABLE}={name!r}: {err}") from None


class NotPositiveDefinite(ValueError):
    """A matrix the merge kernel inverts is not positive definite (GM_ENOTPD)."""


def merge_hills(h0: float, mu0: np.ndarray, metric0: np.ndarray, cov0: np.ndarray | None,
                h1: float, mu1: np.ndarray, metric1: np.ndarray, cov1: np.ndarray | None):
    """Moment-matching merge of two adaptive hills (see gm_merge_hills in gmetad.h):
    heights in eV, centres (D,), metrics and covariances (D, D), a covariance None
    when the caller does not have it (the metric is then inverted in C).
    Returns (centre (D,), height, metric (D, D), covariance (D, D)), metric and
    covariance exactly symmetric; :class:`NotPositiveDefinite` when a matrix to
    invert is not positive definite (or a result not finite)."""
    mu0, mu1, metric0, metric1 = _f64(mu0), _f64(mu1), _f64(metric0), _f64(metric1)
    cov0 = None if cov0 is None else _f64(cov0)
    cov1 = None if cov1 is None else _f64(cov1)
    dim = len(mu0)
    square = (dim, dim)
    if not (mu1.shape == (dim,) and metric0.shape == metric1.shape == square
            and (cov0 is None or cov0.shape == square) and (cov1 is None or cov1.shape == square)):
        shapes = [None if a is None else a.shape for a in (mu0, mu1, metric0, metric1, cov0, cov1)]
        raise ValueError(f"hill merge: shapes {shapes} are not those of centres (D,) and "
                         "metrics and covariances (D, D)")
    # one output buffer: height, centre, metric, covariance
    out = np.empty(1 + dim + 2 * dim * dim)
    p = _ptr("double *", out)
    d = lambda a: _ptr("double *", a)   # noqa: E731
    code = lib.gm_merge_hills(dim, h0, d(mu0), d(metric0), d(cov0), h1, d(mu1), d(metric1), d(cov1),
                              p + 1, p, p + 1 + dim, p + 1 + dim + dim * dim)
    if code == lib.GM_ENOTPD:
        raise NotPositiveDefinite("hill merge: a matrix to invert is not positive definite")
    _check(code, "hill merge")
    matrices = out[1 + dim:].reshape(2, dim, dim)
    return out[1: 1 + dim], float(out[0]), matrices[0], matrices[1]



def _blocks(block_offset: np.ndarray, derivatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked (block_offset int64, derivatives float64, n_funcs) of a contraction."""
    block_offset = np.ascontiguousarray(block_offset, dtype=np.int64)
    derivatives = _f64(derivatives)
    if derivatives.ndim != 3 or derivatives.shape[2] != 3:
        raise ValueError(f"derivatives must have shape (P, F, 3), got {derivatives.shape}")
    if block_offset.ndim != 1 or len(block_offset) < 1 or block_offset[0] != 0 \
            or block_offset[-1] != len(derivatives):
        raise ValueError(f"block_offset must run from 0 to the {len(derivatives)} derivative blocks")
    return block_offset, derivatives, derivatives.shape[1]


def _pair_rows(pair_index: np.ndarray, n_blocks: int, neighbours: NeighbourList) -> np.ndarray:
    """pair_index as int64, one entry per block, each a row of ``neighbours``."""
    pair_index = np.ascontiguousarray(pair_index, dtype=np.int64)
    if pair_index.shape != (n_blocks,):
        raise ValueError(f"pair_index must have shape ({n_blocks},), got {pair_index.shape}")
    if n_blocks and (pair_index.min() < 0 or pair_index.max() >= len(neighbours.first)):
        raise ValueError("pair_index points outside the neighbour list")
    return pair_index


def forces_virial(block_offset: np.ndarray, derivatives: np.ndarray, gradient: np.ndarray,
                  pair_index: np.ndarray, neighbours: NeighbourList, forces: np.ndarray,
                  virial: np.ndarray) -> None:
    """Add the forces -dE/dr (N, 3) in eV/A and the virial -dE/d(strain) (3, 3) in eV
    of an energy E(G) into ``forces`` and ``virial`` (C-contiguous float64), for the
    centres of one element: gradient (C, F) dE/dG in eV, derivatives (P, F, 3) their
    dG/dR_ij blocks in 1/A, the blocks of centre c rows block_offset[c]:block_offset[c+1],
    block r the pair of neighbour-list row pair_index[r] (see gmetad.h)."""
    block_offset, derivatives, n_funcs = _blocks(block_offset, derivatives)
    n_centres = len(block_offset) - 1
    gradient = _f64(gradient)
    if gradient.shape != (n_centres, n_funcs):
        raise ValueError(f"gradient must have shape ({n_centres}, {n_funcs}), got {gradient.shape}")
    pair_index = _pair_rows(pair_index, len(derivatives), neighbours)
    for name, array, shape in (("forces", forces, (len(forces), 3)), ("virial", virial, (3, 3))):
        if array.dtype != np.float64 or array.shape != shape or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float64 array of shape {shape}")
    first = np.ascontiguousarray(neighbours.first, dtype=np.int32)
    second = np.ascontiguousarray(neighbours.second, dtype=np.int32)
    vectors = _f64(neighbours.vectors)
    code = lib.gm_forces_virial(
        n_centres, _ptr("long *", block_offset), n_funcs, _ptr("double *", derivatives),
        _ptr("double *", gradient), _ptr("long *", pair_index), _ptr("int *", first),
        _ptr("int *", second), _ptr("double *", vectors), len(forces), _ptr("double *", forces),
        _ptr("double *", virial))
    _check(code, "forces and virial")


def jacobian_products(block_offset: np.ndarray, derivatives: np.ndarray, images: bool,
                      centre_atoms: np.ndarray | None = None, pair_index: np.ndarray | None = None,
                      neighbours: NeighbourList | None = None, n_atoms: int = 0) -> np.ndarray:
    """J J^T (C, F, F) in 1/A^2 of the centres of one element, J each centre's dense
    dG/dr (see gmetad.h). derivatives (P, F, 3) and block_offset as in
    :func:`forces_virial`. images=False folds periodic images onto their atom, which
    needs centre_atoms (C,), pair_index (P,) into ``neighbours`` and n_atoms;
    images=True gives every block its own column. Exactly symmetric."""
    block_offset, derivatives, n_funcs = _blocks(block_offset, derivatives)
    n_centres = len(block_offset) - 1
    products = np.empty((n_centres, n_funcs, n_funcs))
    atoms = pairs = second = None
    if not images:
        if centre_atoms is None or pair_index is None or neighbours is None:
            raise ValueError("images=False needs centre_atoms, pair_index and neighbours")
        atoms = np.ascontiguousarray(centre_atoms, dtype=np.int32)
        if atoms.shape != (n_centres,):
            raise ValueError(f"centre_atoms must have shape ({n_centres},), got {atoms.shape}")
        pairs = _pair_rows(pair_index, len(derivatives), neighbours)
        second = np.ascontiguousarray(neighbours.second, dtype=np.int32)
    code = lib.gm_jacobian_products(
        n_centres, _ptr("long *", block_offset), n_funcs, _ptr("double *", derivatives),
        int(bool(images)), _ptr("int *", atoms), _ptr("long *", pairs), _ptr("int *", second),
        int(n_atoms), _ptr("double *", products))
    _check(code, "J J^T")
    return products


_isa_from_environment()
