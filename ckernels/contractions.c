/* Contractions of the symmetry-function derivatives (gm_symmetry_functions'
 * per-pair blocks dG_c/dR_ij): forces and virial of an energy E(G), and J J^T
 * per centre for the hill metrics. See gmetad.h.
 *
 * Both visit the blocks in a fixed order (centres, then pairs in neighbour-list
 * order), so results are bit-identical run to run and for any thread count.
 * Plain C99 loops; the J J^T inner loop is an axpy over functions, which the
 * compiler vectorises at -O3 without reassociating sums. */
#include <stdlib.h>
#include <string.h>

#include "gmetad.h"

static int check_offsets(int n_centres, const long *block_offset) {
    if (n_centres < 0 || (n_centres > 0 && !block_offset) || (n_centres > 0 && block_offset[0] < 0))
        return GM_EINVAL;
    for (int c = 0; c < n_centres; c++)
        if (block_offset[c + 1] < block_offset[c]) return GM_EINVAL;
    return GM_OK;
}

/* Every atom index reached through pair_index lies in [0, n_atoms). */
static int check_atoms(long first_row, long end_row, const long *pair_index, const int *atom,
                       int n_atoms) {
    for (long r = first_row; r < end_row; r++) {
        const int a = atom[pair_index[r]];
        if (a < 0 || a >= n_atoms) return GM_EINVAL;
    }
    return GM_OK;
}

int gm_forces_virial(int n_centres, const long *block_offset, int n_funcs,
                     const double *derivatives, const double *gradient,
                     const long *pair_index, const int *first, const int *second,
                     const double *vectors, int n_atoms, double *forces, double *virial) {
    if (n_funcs < 0 || n_atoms < 0) return GM_EINVAL;
    int status = check_offsets(n_centres, block_offset);
    if (status != GM_OK || n_centres == 0) return status;
    const long r0 = block_offset[0], r1 = block_offset[n_centres];
    if (check_atoms(r0, r1, pair_index, first, n_atoms) != GM_OK ||
        check_atoms(r0, r1, pair_index, second, n_atoms) != GM_OK)
        return GM_EINVAL;
    const int F = n_funcs;
    double vir[9] = {0};
    for (int c = 0; c < n_centres; c++) {
        const double *g = gradient + (size_t)c * F;
        for (long r = block_offset[c]; r < block_offset[c + 1]; r++) {
            /* w = dE/dR_ij = sum_f dE/dG_f dG_f/dR_ij; two partial sums per
             * component halve the dependency chain */
            const double *d = derivatives + (size_t)r * F * 3;
            double w[6] = {0};
            int f = 0;
            for (; f + 1 < F; f += 2)
                for (int k = 0; k < 3; k++) {
                    w[k] += g[f] * d[3 * f + k];
                    w[3 + k] += g[f + 1] * d[3 * f + 3 + k];
                }
            if (f < F)
                for (int k = 0; k < 3; k++) w[k] += g[f] * d[3 * f + k];
            const long p = pair_index[r];
            double *fi = forces + 3 * (size_t)first[p], *fj = forces + 3 * (size_t)second[p];
            const double *v = vectors + 3 * p;
            for (int a = 0; a < 3; a++) {
                const double wa = w[a] + w[3 + a];
                fi[a] += wa;
                fj[a] -= wa;
                for (int b = 0; b < 3; b++) vir[3 * a + b] -= wa * v[b];
            }
        }
    }
    for (int k = 0; k < 9; k++) virial[k] += vir[k];
    return GM_OK;
}

/* Scratch of one thread: J of one centre as columns, each column three
 * function vectors (x, y, z components, F doubles each), and the column of each
 * atom (-1: none yet) when images fold. */
typedef struct {
    double *cols;
    int *column_of;
} jjt_work_t;

static int jjt_alloc(jjt_work_t *w, long max_blocks, int F, int n_atoms, int fold) {
    w->cols = malloc(sizeof(double) * 3 * (size_t)F * (size_t)(max_blocks + 1));
    w->column_of = fold ? malloc(sizeof(int) * (size_t)(n_atoms > 0 ? n_atoms : 1)) : NULL;
    if (!w->cols || (fold && !w->column_of)) {
        free(w->cols), free(w->column_of);
        return GM_ENOMEM;
    }
    if (fold)
        for (int a = 0; a < n_atoms; a++) w->column_of[a] = -1;
    return GM_OK;
}

/* column (x, y, z function vectors) = block (F x 3), or += when add */
static void put_block(double *restrict column, const double *restrict block, int F, int add) {
    double *restrict x = column, *restrict y = x + F, *restrict z = y + F;
    if (add) {
        for (int f = 0; f < F; f++) x[f] += block[3 * f], y[f] += block[3 * f + 1], z[f] += block[3 * f + 2];
    } else {
        for (int f = 0; f < F; f++) x[f] = block[3 * f], y[f] = block[3 * f + 1], z[f] = block[3 * f + 2];
    }
}

/* Lower triangle of sum over columns of x x^T + y y^T + z z^T, mirrored. */
static void gram(const double *cols, int n_cols, int F, double *restrict out) {
    memset(out, 0, sizeof(double) * (size_t)F * F);
    for (int m = 0; m < n_cols; m++) {
        const double *restrict x = cols + (size_t)m * 3 * F, *restrict y = x + F, *restrict z = y + F;
        for (int f = 0; f < F; f++) {
            const double xf = x[f], yf = y[f], zf = z[f];
            double *restrict row = out + (size_t)f * F;
            for (int g = 0; g <= f; g++) row[g] += xf * x[g] + yf * y[g] + zf * z[g];
        }
    }
    for (int f = 0; f < F; f++)
        for (int g = 0; g < f; g++) out[(size_t)g * F + f] = out[(size_t)f * F + g];
}

/* J of one centre as columns in w->cols (the centre's first); returns their
 * number. Without images, a pair whose neighbour is the centre itself adds its
 * block to the centre's column and subtracts it again in -(sum of all blocks):
 * it is left out, and the centre's column is -(sum of the other columns). */
static int centre_columns(long r0, long r1, int F, const double *derivatives, int images,
                          int atom, const long *pair_index, const int *second, jjt_work_t *w) {
    const size_t width = 3 * (size_t)F;
    int n_cols = 1;
    for (long r = r0; r < r1; r++) {
        const double *block = derivatives + (size_t)r * width;
        if (images) {
            put_block(w->cols + width * n_cols++, block, F, 0);
            continue;
        }
        const int j = second[pair_index[r]];
        if (j == atom) continue;
        const int m = w->column_of[j];
        if (m >= 0) {
            put_block(w->cols + width * m, block, F, 1);
        } else {
            w->column_of[j] = n_cols;
            put_block(w->cols + width * n_cols++, block, F, 0);
        }
    }
    double *restrict own = w->cols;
    memset(own, 0, sizeof(double) * width);
    for (int m = 1; m < n_cols; m++) {
        const double *restrict col = w->cols + width * m;
        for (size_t k = 0; k < width; k++) own[k] -= col[k];
    }
    if (!images)
        for (long r = r0; r < r1; r++) w->column_of[second[pair_index[r]]] = -1;
    return n_cols;
}

int gm_jacobian_products(int n_centres, const long *block_offset, int n_funcs,
                         const double *derivatives, int images, const int *centre_atom,
                         const long *pair_index, const int *second, int n_atoms,
                         double *products) {
    if (n_funcs < 0) return GM_EINVAL;
    int status = check_offsets(n_centres, block_offset);
    if (status != GM_OK || n_centres == 0) return status;
    if (!images) {
        if (!centre_atom || !pair_index || !second || n_atoms <= 0) return GM_EINVAL;
        for (int c = 0; c < n_centres; c++)
            if (centre_atom[c] < 0 || centre_atom[c] >= n_atoms) return GM_EINVAL;
        if (check_atoms(block_offset[0], block_offset[n_centres], pair_index, second, n_atoms) != GM_OK)
            return GM_EINVAL;
    }
    long max_blocks = 0;
    for (int c = 0; c < n_centres; c++)
        if (block_offset[c + 1] - block_offset[c] > max_blocks)
            max_blocks = block_offset[c + 1] - block_offset[c];
    const int F = n_funcs;
#pragma omp parallel if (n_centres >= 8)
    {
        jjt_work_t w;
        const int ok = jjt_alloc(&w, max_blocks, F, n_atoms, !images) == GM_OK;
        if (!ok) {
#pragma omp atomic write
            status = GM_ENOMEM;
        }
#pragma omp for schedule(dynamic, 4)
        for (int c = 0; c < n_centres; c++) {
            if (!ok) continue; /* every thread must reach the loop; the call fails */
            const int n_cols = centre_columns(block_offset[c], block_offset[c + 1], F, derivatives,
                                              images, images ? -1 : centre_atom[c], pair_index,
                                              second, &w);
            gram(w.cols, n_cols, F, products + (size_t)c * F * F);
        }
        if (ok) free(w.cols), free(w.column_of);
    }
    return status;
}
