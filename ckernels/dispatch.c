/* Run-time choice of the code path of the vector kernels: AVX2 + FMA on CPUs
 * that have both (and an OS that saves AVX registers), the baseline x86-64 build
 * (SSE2) otherwise, unless gm_set_isa() forces one. See gmetad.h. */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gmetad.h"
#include "variants.h"

/* 0: not decided yet; else the GM_ISA_* in use. The one process-wide setting of
 * the kernels; a plain int, written before kernels run (gm_set_isa is not meant
 * to be called while another thread is inside a kernel). */
static int isa_in_use = 0;

static int avx2_available(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (!gm_avx2_compiled) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int gm_set_isa(int isa) {
    if (isa == GM_ISA_AUTO) isa = avx2_available() ? GM_ISA_AVX2 : GM_ISA_BASELINE;
    else if (isa == GM_ISA_AVX2) {
        if (!avx2_available()) return GM_EINVAL;
    } else if (isa != GM_ISA_BASELINE) return GM_EINVAL;
    isa_in_use = isa;
    return isa;
}

int gm_isa(void) {
    if (!isa_in_use) gm_set_isa(GM_ISA_AUTO);
    return isa_in_use;
}

int gm_isa_available(int isa) {
    if (isa == GM_ISA_BASELINE || isa == GM_ISA_AUTO) return 1;
    return isa == GM_ISA_AVX2 && avx2_available();
}

int gm_gaussian_sum(int n_query, int dim, const double *query, int n_hills,
                    const double *centres, const double *heights,
                    const double *inv_cov, const double *inv_var,
                    const double *min_eig, int n_blocks, const int *order,
                    const int *block_first, const int *block_count,
                    const double *block_centre, const double *block_radius,
                    const double *block_min_eig, double q_cut, double *energy,
                    double *gradient, int *nearest, double *nearest_q, long *n_evaluated) {
    return (gm_isa() == GM_ISA_AVX2 ? gm_gaussian_sum_avx2 : gm_gaussian_sum_base)(
        n_query, dim, query, n_hills, centres, heights, inv_cov, inv_var, min_eig, n_blocks,
        order, block_first, block_count, block_centre, block_radius, block_min_eig, q_cut,
        energy, gradient, nearest, nearest_q, n_evaluated);
}

int gm_symmetry_functions(int n_centres, const int *centres, const int *types,
                          const long *pair_offset, const int *neighbour,
                          const double *vectors, int n_funcs,
                          const double *params, double *values,
                          double *derivatives, const long *deriv_start) {
    return (gm_isa() == GM_ISA_AVX2 ? gm_symmetry_functions_avx2 : gm_symmetry_functions_base)(
        n_centres, centres, types, pair_offset, neighbour, vectors, n_funcs, params, values,
        derivatives, deriv_start);
}

int gm_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
