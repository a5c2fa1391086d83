/* Sums of Gaussian hills in symmetry-function space, with rigorous pruning.
 * See gmetad.h for the contract. */
#include <math.h>
#include <stddef.h>

#include "gmetad.h"

static double distance2(int dim, const double *x, const double *y) {
    double s = 0.0;
    for (int k = 0; k < dim; k++) { double d = x[k] - y[k]; s += d * d; }
    return s;
}

/* One query point against all (unpruned) hills. diff and y are dim scratch. */
static long query_one(int dim, const double *g, int n_hills, const double *centres,
                      const double *heights, const double *inv_cov,
                      const double *inv_var, const double *min_eig, int n_blocks,
                      const int *order, const int *block_start,
                      const double *block_centre, const double *block_radius,
                      const double *block_min_eig, double q_cut, double *energy,
                      double *grad, double *diff, double *y) {
    long evaluated = 0;
    double v = 0.0;
    if (grad) for (int k = 0; k < dim; k++) grad[k] = 0.0;
    const int prune = q_cut > 0.0;
    const int nb = n_blocks > 0 ? n_blocks : 1;
    for (int blk = 0; blk < nb; blk++) {
        int first = n_blocks > 0 ? block_start[blk] : 0;
        int last = n_blocks > 0 ? block_start[blk + 1] : n_hills;
        if (prune && n_blocks > 0) {
            double gap = sqrt(distance2(dim, g, block_centre + (size_t)blk * dim)) - block_radius[blk];
            if (gap > 0.0 && block_min_eig[blk] * gap * gap > q_cut) continue;
        }
        for (int t = first; t < last; t++) {
            const int s = (n_blocks > 0 && order) ? order[t] : t;
            const double *mu = centres + (size_t)s * dim;
            double d2 = 0.0;
            for (int k = 0; k < dim; k++) { diff[k] = g[k] - mu[k]; d2 += diff[k] * diff[k]; }
            if (prune && min_eig && min_eig[s] * d2 > q_cut) continue;
            evaluated++;
            double q;
            if (inv_cov) {
                const double *a = inv_cov + (size_t)s * dim * dim;
                q = 0.0;
                for (int r = 0; r < dim; r++) {
                    const double *row = a + (size_t)r * dim;
                    double acc = 0.0;
                    for (int k = 0; k < dim; k++) acc += row[k] * diff[k];
                    y[r] = acc;
                    q += acc * diff[r];
                }
            } else {
                q = inv_var[s] * d2;
                for (int k = 0; k < dim; k++) y[k] = inv_var[s] * diff[k];
            }
            const double w = heights[s] * exp(-0.5 * q);
            v += w;
            if (grad) for (int k = 0; k < dim; k++) grad[k] -= w * y[k];
        }
    }
    *energy = v;
    return evaluated;
}

int gm_gaussian_sum(int n_query, int dim, const double *query, int n_hills,
                    const double *centres, const double *heights,
                    const double *inv_cov, const double *inv_var,
                    const double *min_eig, int n_blocks, const int *order,
                    const int *block_start, const double *block_centre,
                    const double *block_radius, const double *block_min_eig,
                    double q_cut, double *energy, double *gradient,
                    long *n_evaluated) {
    if (n_query < 0 || dim <= 0 || n_hills < 0 || n_blocks < 0) return GM_EINVAL;
    if (!inv_cov && !inv_var && n_hills > 0) return GM_EINVAL;
    if (n_blocks > 0 && (!order || !block_start || !block_centre || !block_radius || !block_min_eig))
        return GM_EINVAL;
    long total = 0;
    /* Threads only pay off for large sums; small ones (one biased atom, few
     * hills) would lose more to thread start-up and spinning than they gain,
     * all the more on a machine shared with i-PI and the force engine. */
    const int parallel = (double)n_query * n_hills * dim * (inv_cov ? dim : 1) > 2.0e6;
#pragma omp parallel reduction(+ : total) if (parallel)
    {
        double diff[dim > 0 ? dim : 1], y[dim > 0 ? dim : 1];
#pragma omp for schedule(static)
        for (int i = 0; i < n_query; i++) {
            total += query_one(dim, query + (size_t)i * dim, n_hills, centres, heights,
                               inv_cov, inv_var, min_eig, n_blocks, order, block_start,
                               block_centre, block_radius, block_min_eig, q_cut,
                               energy + i, gradient ? gradient + (size_t)i * dim : NULL,
                               diff, y);
        }
    }
    if (n_evaluated) *n_evaluated = total;
    return GM_OK;
}
