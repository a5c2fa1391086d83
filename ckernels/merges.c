/* Merging two adaptive Gaussian hills by moment matching. See gmetad.h for the
 * contract.
 *
 * Inversions: Cholesky factor A = U^T U, Y = U^-T by forward substitution,
 * then A^-1 = Y^T Y, its lower triangle mirrored so the result is exactly
 * symmetric; about n^3 / 2 multiply-adds in all. Every inner loop is a
 * contiguous row update (no reductions), which the compiler vectorises; every
 * loop runs in a fixed order, so results are bit-identical run to run.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gmetad.h"

/* y[0..m-1] += f x[0..m-1] (the rows never overlap: restrict spares the
 * compiler's run-time overlap checks, which cost more than these short loops). */
static inline void axpy(int m, double f, const double *restrict x, double *restrict y)
{
    for (int k = 0; k < m; k++)
        y[k] += f * x[k];
}

/* Upper Cholesky factor u (A = u^T u, strict lower triangle zeroed) of the
 * symmetric n x n matrix a, of which the upper triangle is read; right-looking,
 * so every inner loop is a contiguous row update. GM_ENOTPD when a pivot is not
 * > 0 (or NaN). */
static int cholesky_upper(int n, const double *a, double *u)
{
    for (int i = 0; i < n; i++) {
        memset(u + (size_t)i * n, 0, (size_t)i * sizeof(double));
        memcpy(u + (size_t)i * n + i, a + (size_t)i * n + i, (size_t)(n - i) * sizeof(double));
    }
    for (int j = 0; j < n; j++) {
        double *uj = u + (size_t)j * n;
        if (!(uj[j] > 0.0))
            return GM_ENOTPD;
        double root = sqrt(uj[j]), inv = 1.0 / root;
        uj[j] = root;
        for (int k = j + 1; k < n; k++)
            uj[k] *= inv;
        for (int i = j + 1; i < n; i++)
            axpy(n - i, -uj[i], uj + i, u + (size_t)i * n + i);
    }
    return GM_OK;
}

/* y = u^-T (lower triangular, upper zeroed) by forward substitution on the rows:
 * row i of y is (e_i - sum_{k<i} L_ik y_k) / L_ii with L = u^T. */
static void inverse_lower(int n, const double *u, double *y)
{
    memset(y, 0, (size_t)n * n * sizeof(double));
    for (int i = 0; i < n; i++) {
        double *yi = y + (size_t)i * n;
        yi[i] = 1.0;
        for (int k = 0; k < i; k++)
            axpy(k + 1, -u[(size_t)k * n + i], y + (size_t)k * n, yi);
        double inv = 1.0 / u[(size_t)i * n + i];
        for (int j = 0; j <= i; j++)
            yi[j] *= inv;
    }
}

/* out = a^-1 for a symmetric positive-definite n x n a (upper triangle read),
 * exactly symmetric; scratch holds 2 n^2 doubles. out may not alias a.
 * a = L L^T with L = u^T, so a^-1 = Y^T Y = sum_k y_k y_k^T over the rows y_k
 * of Y = L^-1 (y_k is zero beyond entry k). */
static int spd_inverse(int n, const double *a, double *out, double *scratch)
{
    double *u = scratch, *y = scratch + (size_t)n * n;
    int code = cholesky_upper(n, a, u);
    if (code != GM_OK)
        return code;
    inverse_lower(n, u, y);
    memset(out, 0, (size_t)n * n * sizeof(double));
    for (int k = 0; k < n; k++) {
        const double *yk = y + (size_t)k * n;
        for (int i = 0; i <= k; i++)
            axpy(i + 1, yk[i], yk, out + (size_t)i * n);
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            out[(size_t)j * n + i] = out[(size_t)i * n + j];
    return GM_OK;
}

/* d^T a d for a full n x n a: t = d^T a row by row (contiguous updates), then t . d.
 * t holds n doubles. */
static double quadratic_form(int n, const double *a, const double *d, double *t)
{
    memset(t, 0, (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++)
        axpy(n, d[i], a + (size_t)i * n, t);
    double q = 0.0;
    for (int j = 0; j < n; j++)
        q += t[j] * d[j];
    return q;
}

static int all_finite(size_t n, const double *x)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

int gm_merge_hills(int dim, double h0, const double *mu0, const double *a0, const double *s0,
                   double h1, const double *mu1, const double *a1, const double *s1,
                   double *mu, double *height, double *metric, double *covariance)
{
    if (dim <= 0 || !(h0 + h1 > 0.0))
        return GM_EINVAL;
    size_t nn = (size_t)dim * dim;
    /* scratch: two n^2 for the inversions, S1 when inverted here, d, sqrt(w0 w1) d, t */
    double *scratch = malloc((3 * nn + 3 * (size_t)dim) * sizeof(double));
    if (!scratch)
        return GM_ENOMEM;
    double *work = scratch, *cov1 = scratch + 2 * nn, *d = cov1 + nn, *spread = d + dim, *t = spread + dim;
    double w0 = h0 / (h0 + h1), w1 = h1 / (h0 + h1), root = sqrt(w0 * w1);
    for (int i = 0; i < dim; i++) {
        d[i] = mu0[i] - mu1[i];
        spread[i] = root * d[i];
    }
    double q0 = w1 * w1 * quadratic_form(dim, a0, d, t);
    double q1 = w0 * w0 * quadratic_form(dim, a1, d, t);
    int code = GM_OK;
    if (!s0) {
        code = spd_inverse(dim, a0, covariance, work);
        s0 = covariance;
    }
    if (code == GM_OK && !s1) {
        code = spd_inverse(dim, a1, cov1, work);
        s1 = cov1;
    }
    if (code == GM_OK) {
        /* covariance = w0 S0 + w1 S1 + w0 w1 d d^T from the upper triangles (in
         * place when S0 was inverted into it), mirrored */
        for (int i = 0; i < dim; i++) {
            for (int j = i; j < dim; j++) {
                size_t ij = (size_t)i * dim + j;
                covariance[ij] = w0 * s0[ij] + w1 * s1[ij] + spread[i] * spread[j];
            }
            for (int j = 0; j < i; j++)
                covariance[(size_t)i * dim + j] = covariance[(size_t)j * dim + i];
        }
        code = spd_inverse(dim, covariance, metric, work);
    }
    double merged_height = h0 * exp(-0.5 * q0) + h1 * exp(-0.5 * q1);
    for (int i = 0; i < dim; i++)
        d[i] = mu1[i] + w0 * d[i];      /* the merged centre */
    if (code == GM_OK && !(isfinite(merged_height) && all_finite((size_t)dim, d) && all_finite(nn, metric)))
        code = GM_ENOTPD;
    if (code == GM_OK) {
        memcpy(mu, d, (size_t)dim * sizeof(double));
        *height = merged_height;
    }
    free(scratch);
    return code;
}
