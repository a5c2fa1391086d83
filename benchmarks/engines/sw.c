/* Stillinger-Weber energy, forces and virial for one element, from a full
 * neighbour list (benchmark engine; the functional form of matscipy's
 * StillingerWeber, F. Stillinger and T. Weber, Phys. Rev. B 31, 5262 (1985)):
 *
 *   E = sum_{i<j} phi2(r_ij) + sum_i sum_{j<k in N(i)} phi3(r_ij, r_ik, cos theta_jik)
 *   phi2(r)      = A eps (B (sigma/r)^p - (sigma/r)^q) exp(sigma / (r - a sigma))
 *   phi3         = lambda eps (cos theta + costheta0)^2
 *                  exp(gamma sigma / (r_ij - a sigma) + gamma sigma / (r_ik - a sigma))
 *
 * costheta0 follows matscipy's sign: +1/3 for the tetrahedral angle. Lengths in
 * angstrom, energies in eV. Plain C99, single thread, deterministic (sums in list
 * order).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sw.h"

int sw_compute(int n_atoms, const int *first, const int *second, const double *vectors,
               const long long *offset, double epsilon, double sigma, double a,
               double lambda, double gamma, double A, double B, double p, double q,
               double costheta0, double *energy, double *forces, double *virial)
{
    const double rc = a * sigma;
    double e_total = 0.0, w[9] = {0.0};
    int max_neigh = 0;
    for (int i = 0; i < n_atoms; ++i) {
        long long n = offset[i + 1] - offset[i];
        if (n < 0) return -1;
        if (n > max_neigh) max_neigh = (int)n;
    }
    memset(forces, 0, sizeof(double) * 3 * (size_t)n_atoms);

    /* per-centre scratch: r, unit vector, exp(gamma sigma / (r - rc)) and its r-derivative */
    double *r = malloc(sizeof(double) * (size_t)(max_neigh > 0 ? max_neigh : 1) * 6);
    if (!r) return -2;
    double *u = r + max_neigh, *ex = r + 4 * max_neigh, *dex = r + 5 * max_neigh;
    int *inside = malloc(sizeof(int) * (size_t)(max_neigh > 0 ? max_neigh : 1));
    if (!inside) { free(r); return -2; }

    for (int i = 0; i < n_atoms; ++i) {
        const long long start = offset[i];
        const int n = (int)(offset[i + 1] - start);
        double *fi = forces + 3 * i;
        int m = 0;  /* neighbours of i inside the cutoff, compacted */
        for (int s = 0; s < n; ++s) {
            const long long pidx = start + s;
            if (first[pidx] != i) { free(r); free(inside); return -1; }
            const double *v = vectors + 3 * pidx;
            const double rr = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
            if (!(rr < rc) || rr <= 0.0) continue;
            const double inv = 1.0 / rr, d = rr - rc;
            /* two-body, half of each ordered pair */
            const double sr = sigma * inv;
            const double srp = pow(sr, p), srq = (q == 0.0) ? 1.0 : pow(sr, q);
            const double cut = exp(sigma / d);
            const double poly = B * srp - srq;
            const double phi = A * epsilon * poly * cut;
            const double dphi = A * epsilon * cut * (-(p * B * srp - q * srq) * inv - poly * sigma / (d * d));
            const double g = 0.5 * dphi * inv;  /* dE/dv = g v */
            e_total += 0.5 * phi;
            double *fj = forces + 3 * second[pidx];
            for (int x = 0; x < 3; ++x) {
                fi[x] += g * v[x];
                fj[x] -= g * v[x];
                for (int y = 0; y < 3; ++y) w[3 * x + y] += v[x] * g * v[y];
            }
            r[m] = rr;
            for (int x = 0; x < 3; ++x) u[3 * m + x] = v[x] * inv;
            ex[m] = exp(gamma * sigma / d);
            dex[m] = -gamma * sigma / (d * d) * ex[m];
            inside[m] = (int)pidx;
            ++m;
        }
        /* three-body over j < k of centre i */
        for (int j = 0; j < m; ++j) {
            const double *uj = u + 3 * j;
            const double rj = r[j];
            const double *vj = vectors + 3 * (long long)inside[j];
            double *fj = forces + 3 * second[inside[j]];
            double dj_acc[3] = {0.0, 0.0, 0.0};  /* dE/dv_ij summed over k */
            for (int k = j + 1; k < m; ++k) {
                const double *uk = u + 3 * k;
                const double rk = r[k];
                const double c = uj[0] * uk[0] + uj[1] * uk[1] + uj[2] * uk[2];
                const double t = c + costheta0;
                const double le = lambda * epsilon;
                const double h = le * ex[j] * ex[k];
                e_total += h * t * t;
                const double dc = 2.0 * h * t;  /* dE/dcos */
                const double ar_j = le * dex[j] * ex[k] * t * t;  /* dE/dr_ij (radial) */
                const double ar_k = le * ex[j] * dex[k] * t * t;
                double dj[3], dk[3];
                for (int x = 0; x < 3; ++x) {
                    dj[x] = ar_j * uj[x] + dc * (uk[x] - c * uj[x]) / rj;
                    dk[x] = ar_k * uk[x] + dc * (uj[x] - c * uk[x]) / rk;
                }
                const double *vk = vectors + 3 * (long long)inside[k];
                double *fk = forces + 3 * second[inside[k]];
                for (int x = 0; x < 3; ++x) {
                    dj_acc[x] += dj[x];
                    fi[x] += dk[x];
                    fk[x] -= dk[x];
                    for (int y = 0; y < 3; ++y) w[3 * x + y] += vk[x] * dk[y];
                }
            }
            for (int x = 0; x < 3; ++x) {
                fi[x] += dj_acc[x];
                fj[x] -= dj_acc[x];
                for (int y = 0; y < 3; ++y) w[3 * x + y] += vj[x] * dj_acc[y];
            }
        }
    }
    free(r);
    free(inside);
    *energy = e_total;
    if (virial) memcpy(virial, w, sizeof w);
    return 0;
}
