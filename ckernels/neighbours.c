/* Cell-list neighbour search for periodic (any subset of directions),
 * triclinic and small cells. See gmetad.h for the contract. */
#include <math.h>
#include <stdlib.h>

#include "gmetad.h"

/* Inverse of a 3x3 matrix m (rows); returns the determinant. */
static double invert3(const double *m, double *inv) {
    double det = m[0] * (m[4] * m[8] - m[5] * m[7]) -
                 m[1] * (m[3] * m[8] - m[5] * m[6]) +
                 m[2] * (m[3] * m[7] - m[4] * m[6]);
    if (det == 0.0 || !isfinite(det)) return 0.0;
    double s = 1.0 / det;
    inv[0] = (m[4] * m[8] - m[5] * m[7]) * s;
    inv[1] = (m[2] * m[7] - m[1] * m[8]) * s;
    inv[2] = (m[1] * m[5] - m[2] * m[4]) * s;
    inv[3] = (m[5] * m[6] - m[3] * m[8]) * s;
    inv[4] = (m[0] * m[8] - m[2] * m[6]) * s;
    inv[5] = (m[2] * m[3] - m[0] * m[5]) * s;
    inv[6] = (m[3] * m[7] - m[4] * m[6]) * s;
    inv[7] = (m[1] * m[6] - m[0] * m[7]) * s;
    inv[8] = (m[0] * m[4] - m[1] * m[3]) * s;
    return det;
}

long gm_neighbours(int n_atoms, const double *positions, const double *cell,
                   const int *pbc, double cutoff, long capacity,
                   int *pair_first, int *pair_second, double *vectors) {
    if (n_atoms < 0 || !(cutoff > 0.0) || !isfinite(cutoff)) return GM_EINVAL;
    if (n_atoms == 0) return 0;
    for (long a = 0; a < 3L * n_atoms; a++)
        if (!isfinite(positions[a])) return GM_EINVAL;

    double inv[9];
    if (invert3(cell, inv) == 0.0) return GM_ESINGULAR;

    /* Fractional coordinates s = r . inv (r = s . cell); wrapped where periodic. */
    double *frac = malloc(sizeof(double) * 3 * (size_t)n_atoms);
    int *bin_of = malloc(sizeof(int) * (size_t)n_atoms);
    if (!frac || !bin_of) { free(frac); free(bin_of); return GM_ENOMEM; }

    double lo[3], width[3], span[3];
    int nbin[3], reach[3];
    for (int d = 0; d < 3; d++) {
        /* |column d of inv| is 1 / (distance between lattice planes d). */
        double b = sqrt(inv[d] * inv[d] + inv[3 + d] * inv[3 + d] + inv[6 + d] * inv[6 + d]);
        span[d] = cutoff * b; /* fractional extent of one cutoff along d */
        lo[d] = 0.0;
        double hi = 1.0;
        for (int i = 0; i < n_atoms; i++) {
            const double *r = positions + 3 * i;
            double s = r[0] * inv[d] + r[1] * inv[3 + d] + r[2] * inv[6 + d];
            if (pbc[d]) s -= floor(s);
            if (pbc[d] && s >= 1.0) s = 0.0; /* floor rounding at 1 - eps */
            frac[3 * i + d] = s;
        }
        if (!pbc[d]) {
            lo[d] = hi = frac[d];
            for (int i = 1; i < n_atoms; i++) {
                double s = frac[3 * i + d];
                if (s < lo[d]) lo[d] = s;
                if (s > hi) hi = s;
            }
        }
        double extent = hi - lo[d];
        nbin[d] = (int)floor(extent / span[d]);
        if (nbin[d] < 1) nbin[d] = 1;
        /* bound the bin count so sparse, huge open boxes stay cheap */
        if (nbin[d] > 2 * n_atoms + 8) nbin[d] = 2 * n_atoms + 8;
        width[d] = (extent > 0.0 ? extent : 1.0) / nbin[d];
        reach[d] = (int)ceil(span[d] / width[d]);
        if (!pbc[d] && reach[d] > nbin[d]) reach[d] = nbin[d];
    }

    long total_bins = (long)nbin[0] * nbin[1] * nbin[2];
    long *bin_start = calloc((size_t)total_bins + 1, sizeof(long));
    int *sorted = malloc(sizeof(int) * (size_t)n_atoms);
    if (!bin_start || !sorted) {
        free(frac); free(bin_of); free(bin_start); free(sorted);
        return GM_ENOMEM;
    }
    for (int i = 0; i < n_atoms; i++) {
        int idx[3];
        for (int d = 0; d < 3; d++) {
            int k = (int)floor((frac[3 * i + d] - lo[d]) / width[d]);
            if (k < 0) k = 0;
            if (k >= nbin[d]) k = nbin[d] - 1;
            idx[d] = k;
        }
        bin_of[i] = (idx[0] * nbin[1] + idx[1]) * nbin[2] + idx[2];
        bin_start[bin_of[i] + 1]++;
    }
    for (long b = 0; b < total_bins; b++) bin_start[b + 1] += bin_start[b];
    {
        long *fill = malloc(sizeof(long) * (size_t)total_bins);
        if (!fill) {
            free(frac); free(bin_of); free(bin_start); free(sorted);
            return GM_ENOMEM;
        }
        for (long b = 0; b < total_bins; b++) fill[b] = bin_start[b];
        for (int i = 0; i < n_atoms; i++) sorted[fill[bin_of[i]]++] = i;
        free(fill);
    }

    const double cut2 = cutoff * cutoff;
    long count = 0;
    for (int i = 0; i < n_atoms; i++) {
        int bi[3];
        bi[0] = bin_of[i] / (nbin[1] * nbin[2]);
        bi[1] = (bin_of[i] / nbin[2]) % nbin[1];
        bi[2] = bin_of[i] % nbin[2];
        const double *si = frac + 3 * i;
        for (int o0 = -reach[0]; o0 <= reach[0]; o0++) {
            int t0 = bi[0] + o0, n0 = 0;
            if (pbc[0]) { n0 = (int)floor((double)t0 / nbin[0]); t0 -= n0 * nbin[0]; }
            else if (t0 < 0 || t0 >= nbin[0]) continue;
            for (int o1 = -reach[1]; o1 <= reach[1]; o1++) {
                int t1 = bi[1] + o1, n1 = 0;
                if (pbc[1]) { n1 = (int)floor((double)t1 / nbin[1]); t1 -= n1 * nbin[1]; }
                else if (t1 < 0 || t1 >= nbin[1]) continue;
                for (int o2 = -reach[2]; o2 <= reach[2]; o2++) {
                    int t2 = bi[2] + o2, n2 = 0;
                    if (pbc[2]) { n2 = (int)floor((double)t2 / nbin[2]); t2 -= n2 * nbin[2]; }
                    else if (t2 < 0 || t2 >= nbin[2]) continue;
                    long b = ((long)t0 * nbin[1] + t1) * nbin[2] + t2;
                    for (long q = bin_start[b]; q < bin_start[b + 1]; q++) {
                        int j = sorted[q];
                        if (j == i && n0 == 0 && n1 == 0 && n2 == 0) continue;
                        const double *sj = frac + 3 * j;
                        double ds0 = sj[0] + n0 - si[0];
                        double ds1 = sj[1] + n1 - si[1];
                        double ds2 = sj[2] + n2 - si[2];
                        double v[3];
                        for (int k = 0; k < 3; k++)
                            v[k] = ds0 * cell[k] + ds1 * cell[3 + k] + ds2 * cell[6 + k];
                        double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        if (r2 >= cut2) continue;
                        if (count < capacity) {
                            pair_first[count] = i;
                            pair_second[count] = j;
                            vectors[3 * count] = v[0];
                            vectors[3 * count + 1] = v[1];
                            vectors[3 * count + 2] = v[2];
                        }
                        count++;
                    }
                }
            }
        }
    }
    free(frac); free(bin_of); free(bin_start); free(sorted);
    return count;
}
