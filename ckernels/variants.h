/* The code paths behind the public kernels of gmetad.h (not part of the API).
 * Every kernel with vector code is compiled twice: <name>_base for the baseline
 * x86-64 (SSE2), and <name>_avx2 with AVX2 and FMA enabled (see *_avx2.c);
 * dispatch.c calls one of them. */
#ifndef GMETAD_VARIANTS_H
#define GMETAD_VARIANTS_H

#define GM_GAUSSIAN_SUM_ARGS                                                              \
    int n_query, int dim, const double *query, int n_hills, const double *centres,       \
        const double *heights, const double *inv_cov, const double *inv_var,             \
        const double *min_eig, int n_blocks, const int *order, const int *block_first,   \
        const int *block_count, const double *block_centre, const double *block_radius,  \
        const double *block_min_eig, double q_cut, double *energy, double *gradient,     \
        int *nearest, double *nearest_q, long *n_evaluated
#define GM_SYMMETRY_ARGS                                                                  \
    int n_centres, const int *centres, const int *types, const long *pair_offset,        \
        const int *neighbour, const double *vectors, int n_funcs, const double *params,  \
        double *values, double *derivatives, const long *deriv_start

int gm_gaussian_sum_base(GM_GAUSSIAN_SUM_ARGS);
int gm_gaussian_sum_avx2(GM_GAUSSIAN_SUM_ARGS);
int gm_symmetry_functions_base(GM_SYMMETRY_ARGS);
int gm_symmetry_functions_avx2(GM_SYMMETRY_ARGS);

/* 1 when the *_avx2 copies were really compiled for AVX2 + FMA (GCC or clang on
 * x86-64), 0 when they are baseline code under another name. */
extern const int gm_avx2_compiled;

#endif /* GMETAD_VARIANTS_H */
