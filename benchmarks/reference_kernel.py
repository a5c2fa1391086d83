"""The hills kernel before the AVX2/FMA restructuring, for before/after timings.

benchmarks/reference/gaussians_before.c is ckernels/gaussians.c of commit fdfa6fc
(the kernel the issue's figures were measured with: SSE2 with an AVX2
target_clones copy, no FMA). :func:`load` builds it once with the package's flags
(-O3 -std=c99 and OpenMP) into a benchmark-only cffi module in
benchmarks/.cache/reference_kernel/ (benchmarks/cffi_cache.py) and returns (ffi, lib); :func:`gaussian_sum`
calls it with the argument conventions of the old kernel (contiguous blocks:
order[start[b]:start[b + 1]]).
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "reference", "gaussians_before.c")
MODULE = "_gaussians_before"

CDEF = """
int gm_gaussian_sum(int n_query, int dim, const double *query, int n_hills,
                    const double *centres, const double *heights,
                    const double *inv_cov, const double *inv_var,
                    const double *min_eig, int n_blocks, const int *order,
                    const int *block_start, const double *block_centre,
                    const double *block_radius, const double *block_min_eig,
                    double q_cut, double *energy, double *gradient,
                    long *n_evaluated);
"""


def load(baseline: bool = False):
    """(ffi, lib) of the old kernel, compiled on first use (benchmarks/cffi_cache.py).
    baseline=True: built without its AVX2 clone (-DGM_BASELINE_ONLY), the code a CPU
    without AVX2 ran."""
    root = os.path.dirname(HERE)
    for path in (HERE, os.path.join(root, "ckernels")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import cffi_cache
    from build import _openmp_flags

    omp = _openmp_flags()
    flags = ["-O3", "-D_DEFAULT_SOURCE"] + omp + (["-DGM_BASELINE_ONLY"] if baseline else [])
    return cffi_cache.load(MODULE + ("_baseline" if baseline else ""), "reference_kernel", CDEF, CDEF, [SOURCE],
                           compile_args=flags, link_args=omp)


def contiguous_blocks(blocks):
    """The current kernel's blocks (order, first, count, ...) as the old kernel's
    (order, start, ...), hills of block b at order[start[b]:start[b + 1]]."""
    order, first, count, centre, radius, min_eig = blocks
    flat = np.concatenate([order[f:f + c] for f, c in zip(first, count)]).astype(np.int32)
    start = np.zeros(len(count) + 1, dtype=np.int32)
    np.cumsum(count, out=start[1:])
    return flat, start, np.ascontiguousarray(centre), np.ascontiguousarray(radius), np.ascontiguousarray(min_eig)


def gaussian_sum(query, centres, heights, inv_cov=None, inv_var=None, min_eig=None, blocks=None,
                 q_cut=0.0, gradient=True, old_blocks=None, baseline=False):
    """V, dV/dg and the number of pairs evaluated, with the old kernel (arguments as
    biasserver.kernels.gaussian_sum; blocks in the current kernel's form, or
    old_blocks: :func:`contiguous_blocks` of them, converted beforehand so that a
    timing measures the kernel alone); baseline: the build without AVX2 clone."""
    ffi, lib = load(baseline)
    f64 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    ptr = lambda t, a: ffi.NULL if a is None else ffi.cast(t, ffi.from_buffer(a))     # noqa: E731
    query, centres, heights = f64(query), f64(centres), f64(heights)
    inv_cov, inv_var, min_eig = f64(inv_cov), f64(inv_var), f64(min_eig)
    n_query, dim = query.shape
    energy = np.zeros(n_query)
    grad = np.zeros((n_query, dim)) if gradient else None
    evaluated = ffi.new("long *")
    if old_blocks is None and blocks is not None:
        old_blocks = contiguous_blocks(blocks)
    if old_blocks is None:
        n_blocks, order, start, bc, br, bm = 0, None, None, None, None, None
    else:
        order, start, bc, br, bm = old_blocks
        n_blocks = len(start) - 1
    code = lib.gm_gaussian_sum(n_query, dim, ptr("double *", query), len(heights),
                               ptr("double *", centres), ptr("double *", heights),
                               ptr("double *", inv_cov), ptr("double *", inv_var),
                               ptr("double *", min_eig), n_blocks, ptr("int *", order),
                               ptr("int *", start), ptr("double *", bc), ptr("double *", br),
                               ptr("double *", bm), float(q_cut), ptr("double *", energy),
                               ptr("double *", grad), evaluated)
    if code < 0:
        raise ValueError(f"reference Gaussian sum: error {code}")
    return energy, grad, int(evaluated[0])
