/* Behler atom-centred symmetry functions G2, G4, G5 with analytic derivatives.
 *
 *   fc(R) = 0.5 (cos(pi R / Rc) + 1) for R < Rc, else 0
 *   G2 = sum_j exp(-eta (R_ij - Rs)^2) fc(R_ij)
 *   G4 = 2^(1-zeta) sum_{j<k} (1 + lambda cos)^zeta
 *        exp(-eta (R_ij^2 + R_ik^2 + R_jk^2)) fc(R_ij) fc(R_ik) fc(R_jk)
 *   G5 = as G4 without the R_jk^2 term and without fc(R_jk)
 *
 * j < k runs over neighbour-list entries, so periodic images of one atom are
 * distinct neighbours, as the physical sums require. See gmetad.h. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "gmetad.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int gm_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Cutoff function and its derivative d fc / dR. */
static inline void cutoff_fn(double r, double rc, double *fc, double *dfc) {
    if (r >= rc) { *fc = 0.0; *dfc = 0.0; return; }
    double x = M_PI / rc;
    *fc = 0.5 * (cos(x * r) + 1.0);
    *dfc = -0.5 * x * sin(x * r);
}

/* base^zeta and d(base^zeta)/d base, with a multiplication fast path for the
 * small integer exponents every published parameter set uses. */
static inline void power(double base, double zeta, double *p, double *dp) {
    if (base <= 0.0) { /* 1 + lambda cos is >= 0 up to round-off */
        *p = 0.0;
        *dp = (zeta == 1.0) ? 1.0 : 0.0;
        return;
    }
    int iz = (int)zeta;
    if ((double)iz == zeta && iz >= 1 && iz <= 64) {
        double r = 1.0, b = base;
        int n = iz - 1;
        while (n) { if (n & 1) r *= b; b *= b; n >>= 1; }
        *dp = zeta * r;      /* base^(zeta-1) * zeta */
        *p = r * base;
        return;
    }
    *p = pow(base, zeta);
    *dp = zeta * (*p) / base;
}

static int check_params(int n_funcs, const double *params) {
    for (int f = 0; f < n_funcs; f++) {
        const double *q = params + GM_PARAM_COLUMNS * f;
        int kind = (int)q[0];
        if (kind != 2 && kind != 4 && kind != 5) return GM_EINVAL;
        if (!(q[3] > 0.0) || !isfinite(q[3])) return GM_EINVAL;
        for (int c = 4; c < GM_PARAM_COLUMNS; c++)
            if (!isfinite(q[c])) return GM_EINVAL;
        if (kind != 2 && !(q[5] > 0.0)) return GM_EINVAL; /* zeta > 0 */
    }
    return GM_OK;
}

static void one_centre(int i, const int *types, const long *pair_offset,
                       const int *neighbour, const double *vectors, int n_funcs,
                       const double *params, const double *pref_table,
                       double *g, double *dg) {
    const long p0 = pair_offset[i], np = pair_offset[i + 1] - p0;
    for (int f = 0; f < n_funcs; f++) g[f] = 0.0;
    if (dg)
        for (long a = 0; a < np * n_funcs * 3; a++) dg[a] = 0.0;

    int has_angular = 0;
    /* Radial part. */
    for (long q = 0; q < np; q++) {
        const double *v = vectors + 3 * (p0 + q);
        const int tj = types[neighbour[p0 + q]];
        const double r = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        double rc_cached = -1.0, fc = 0.0, dfc = 0.0;
        for (int f = 0; f < n_funcs; f++) {
            const double *pf = params + GM_PARAM_COLUMNS * f;
            if ((int)pf[0] != 2) { has_angular = 1; continue; }
            if ((int)pf[1] != tj) continue;
            if (pf[3] != rc_cached) { rc_cached = pf[3]; cutoff_fn(r, rc_cached, &fc, &dfc); }
            if (fc == 0.0) continue;
            const double eta = pf[4], dr = r - pf[5];
            const double e = exp(-eta * dr * dr);
            g[f] += e * fc;
            if (dg) {
                const double s = (e * dfc - 2.0 * eta * dr * e * fc) / r;
                double *d = dg + (q * n_funcs + f) * 3;
                d[0] += s * v[0]; d[1] += s * v[1]; d[2] += s * v[2];
            }
        }
    }
    if (!has_angular) return;

    /* Angular part: every unordered pair of neighbour entries (j<k). */
    for (long qj = 0; qj < np; qj++) {
        const double *a = vectors + 3 * (p0 + qj);
        const int tj = types[neighbour[p0 + qj]];
        const double ra2 = a[0] * a[0] + a[1] * a[1] + a[2] * a[2];
        const double ra = sqrt(ra2);
        for (long qk = qj + 1; qk < np; qk++) {
            const double *b = vectors + 3 * (p0 + qk);
            const int tk = types[neighbour[p0 + qk]];
            const double rb2 = b[0] * b[0] + b[1] * b[1] + b[2] * b[2];
            const double rb = sqrt(rb2);
            const double c[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
            const double rcc2 = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
            const double rcc = sqrt(rcc2);
            const double inv_ab = 1.0 / (ra * rb);
            const double cost = (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]) * inv_ab;
            double dcos_a[3], dcos_b[3];
            for (int k = 0; k < 3; k++) {
                dcos_a[k] = b[k] * inv_ab - cost * a[k] / ra2;
                dcos_b[k] = a[k] * inv_ab - cost * b[k] / rb2;
            }
            double rc_cached = -1.0, fa = 0, dfa = 0, fb = 0, dfb = 0, fcj = 0, dfcj = 0;
            double eta_cached = -1.0, e4 = 0.0, e5 = 0.0;
            for (int f = 0; f < n_funcs; f++) {
                const double *pf = params + GM_PARAM_COLUMNS * f;
                const int kind = (int)pf[0];
                if (kind == 2) continue;
                const int e1 = (int)pf[1], e2 = (int)pf[2];
                if (!((tj == e1 && tk == e2) || (tj == e2 && tk == e1))) continue;
                if (pf[3] != rc_cached) {
                    rc_cached = pf[3];
                    cutoff_fn(ra, rc_cached, &fa, &dfa);
                    cutoff_fn(rb, rc_cached, &fb, &dfb);
                    cutoff_fn(rcc, rc_cached, &fcj, &dfcj);
                }
                if (fa == 0.0 || fb == 0.0) continue;
                if (kind == 4 && fcj == 0.0) continue;
                const double eta = pf[4], zeta = pf[5], lambda = pf[6];
                if (eta != eta_cached) {
                    eta_cached = eta;
                    e5 = exp(-eta * (ra2 + rb2));
                    e4 = e5 * exp(-eta * rcc2);
                }
                double pz, dpz;
                power(1.0 + lambda * cost, zeta, &pz, &dpz);
                const double pref = pref_table[f];
                const double e = (kind == 4) ? e4 : e5;
                const double fjk = (kind == 4) ? fcj : 1.0;
                const double fprod = fa * fb * fjk;
                g[f] += pref * pz * e * fprod;
                if (!dg) continue;
                /* d/da and d/db of pref * P^zeta * E * F, with c = b - a. */
                const double t_cos = pref * dpz * lambda * e * fprod;
                const double t_exp = -2.0 * eta * pref * pz * e * fprod;
                const double t_pe = pref * pz * e;
                const double sa = t_pe * dfa * fb * fjk / ra;
                const double sb = t_pe * fa * dfb * fjk / rb;
                const double sc = (kind == 4) ? t_pe * fa * fb * dfcj / rcc : 0.0;
                const double xc = (kind == 4) ? 1.0 : 0.0;
                double *da = dg + (qj * n_funcs + f) * 3;
                double *db = dg + (qk * n_funcs + f) * 3;
                for (int k = 0; k < 3; k++) {
                    da[k] += t_cos * dcos_a[k] + t_exp * (a[k] - xc * c[k]) + sa * a[k] - sc * c[k];
                    db[k] += t_cos * dcos_b[k] + t_exp * (b[k] + xc * c[k]) + sb * b[k] + sc * c[k];
                }
            }
        }
    }
}

int gm_symmetry_functions(int n_centres, const int *centres, const int *types,
                          const long *pair_offset, const int *neighbour,
                          const double *vectors, int n_funcs,
                          const double *params, double *values,
                          double *derivatives, const long *deriv_start) {
    if (n_centres < 0 || n_funcs < 0) return GM_EINVAL;
    int status = check_params(n_funcs, params);
    if (status != GM_OK) return status;
    if (derivatives && !deriv_start) return GM_EINVAL;
    /* 2^(1 - zeta) once per function, not once per triplet. */
    double *pref_table = malloc(sizeof(double) * (size_t)(n_funcs > 0 ? n_funcs : 1));
    if (!pref_table) return GM_ENOMEM;
    for (int f = 0; f < n_funcs; f++)
        pref_table[f] = pow(2.0, 1.0 - params[GM_PARAM_COLUMNS * f + 5]);
#pragma omp parallel for schedule(dynamic, 4)
    for (int c = 0; c < n_centres; c++) {
        double *dg = derivatives ? derivatives + deriv_start[c] * n_funcs * 3 : NULL;
        one_centre(centres[c], types, pair_offset, neighbour, vectors, n_funcs,
                   params, pref_table, values + (size_t)c * n_funcs, dg);
    }
    free(pref_table);
    return GM_OK;
}
