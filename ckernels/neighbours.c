/* Cell-list neighbour search for periodic (any subset of directions),
 * triclinic and small cells. See gmetad.h for the contract.
 *
 * Bins. Atoms are binned in fractional coordinates of `cell` (wrapped into
 * [0, 1) along periodic directions; over the atoms' own range [lo, hi] along the
 * others). Along direction d a bin is at least cutoff / BINS_PER_CUTOFF wide,
 * measured across the lattice planes d (so the rule holds for triclinic cells):
 *   nbin[d] = max(1, floor(BINS_PER_CUTOFF * extent[d] / span[d])),
 * span[d] being the fractional extent of one cutoff across those planes (extent
 * 1 if periodic, hi - lo if not). A cell thinner than cutoff / BINS_PER_CUTOFF has
 * one bin along that direction, and the search reaches several of its periodic
 * images. The total number of bins is capped at MAX_BINS_PER_ATOM per atom (plus
 * a constant) by halving the largest count, so sparse or very long open systems
 * keep O(N) memory; a centre visits O(BINS_PER_CUTOFF^3) bins whatever the size.
 *
 * Stencil. A centre in bin b looks at bins b + o for the offsets o whose bin can
 * hold a point closer than the cutoff to a point of bin b: the exact minimum
 * distance between the two (triclinic) boxes is computed once per offset
 * (box_min_norm2), with the boxes grown by a relative 1e-6 of a bin so that
 * round-off in the binning can only add candidates, never lose a pair. The
 * offsets (o0, o1) of one row share an interval of o2.
 *
 * Images. Along periodic directions the bins are padded with `reach` bins of
 * periodic images (ghost copies of the atoms, positions shifted by their lattice
 * vector) on either side, so a centre's stencil never wraps: one row is one run
 * of consecutive ghosts, and a pair vector is one subtraction. A small cell is
 * thus copied as many times as the cutoff needs (every image of one atom is a
 * distinct neighbour); a large one gains a layer of reach bins on each face.
 * For Si64 (cubic 10.86 A, cutoff 6 A, 45 neighbours per atom) a centre tests
 * 276 candidates in 25 runs, instead of 1728 with cutoff-wide bins
 * (benchmarks/README.md, "Neighbour list").
 *
 * Order of the output (deterministic for given positions, cell, pbc and cutoff;
 * the symmetry-function sums follow it, so restarts are bit-identical):
 * centres in increasing index; for one centre, stencil offsets (o0, o1, o2) in
 * lexicographic order, and within one bin (one image of it) the atoms in
 * increasing index. The order within a centre is therefore not sorted by
 * neighbour index, and it changes when an atom crosses a bin boundary (results
 * then differ at round-off only).
 */
#include <math.h>
#include <stdlib.h>

#include "gmetad.h"

/* Bins per cutoff along each direction. 1 is the classic cell list; 2 was the
 * fastest on Si64 to Si512 and a Pt slab (3 and 4 test fewer candidates but visit
 * more bins; benchmarks/README.md, "Neighbour list"). */
#define BINS_PER_CUTOFF 2
/* Upper bound on the bins per atom (total bins <= this * n_atoms + 64). */
#define MAX_BINS_PER_ATOM 8
/* Relative growth of the bin boxes when building the stencil. */
#define BOX_SLACK 1e-6

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

/* min over lo <= x <= hi (componentwise) of x^T G x, G (3x3, symmetric positive
 * definite: the metric of the cell). Convex, so the minimum is a stationary point
 * of x^T G x on one face (of any dimension) of the box: every choice of
 * {free, at lo, at hi} per coordinate is tried, the free ones solved for, and the
 * smallest value at a feasible point kept. Points infeasible by round-off
 * (1e-12 of the box size) are accepted, which can only lower the result. */
static double box_min_norm2(const double *G, const double *lo, const double *hi) {
    double best = INFINITY;
    for (int pattern = 0; pattern < 27; pattern++) {
        int state[3] = {pattern % 3, (pattern / 3) % 3, pattern / 9}; /* 0 free, 1 lo, 2 hi */
        double x[3] = {0.0, 0.0, 0.0};
        int freed[3], nf = 0;
        for (int d = 0; d < 3; d++) {
            if (state[d] == 0) freed[nf++] = d;
            else x[d] = state[d] == 1 ? lo[d] : hi[d];
        }
        if (nf > 0 && nf < 3) { /* (nf == 3: the origin) */
            /* G_FF x_F = -G_FB x_B */
            double rhs[2] = {0.0, 0.0};
            for (int a = 0; a < nf; a++)
                for (int d = 0; d < 3; d++)
                    if (state[d] != 0) rhs[a] -= G[3 * freed[a] + d] * x[d];
            if (nf == 1) {
                x[freed[0]] = rhs[0] / G[4 * freed[0]];
            } else {
                int p = freed[0], q = freed[1];
                double a = G[3 * p + p], b = G[3 * p + q], c = G[3 * q + q];
                double det = a * c - b * b;
                if (!(det > 0.0)) continue;
                x[p] = (c * rhs[0] - b * rhs[1]) / det;
                x[q] = (a * rhs[1] - b * rhs[0]) / det;
            }
        }
        int feasible = 1;
        for (int a = 0; a < nf; a++) {
            int d = freed[a];
            double tol = 1e-12 * (fabs(lo[d]) + fabs(hi[d]));
            if (x[d] < lo[d] - tol || x[d] > hi[d] + tol) feasible = 0;
        }
        if (!feasible) continue;
        double v = 0.0;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) v += x[a] * G[3 * a + b] * x[b];
        if (v < best) best = v;
    }
    return best;
}

/* One row of the stencil: offsets (o0, o1, o2) for o2 = o2_lo .. o2_hi. */
typedef struct { int o0, o1, o2_lo, o2_hi; } stencil_row;

/* Whether a bin at offset (o0, o1, o2) with o2 in [o2_from, o2_to] can hold a
 * point closer than sqrt(cut2) to a point of bin (0, 0, 0): the difference of two
 * such points lies in the box (o - 1) w .. (o + 1) w (fractional), grown by
 * BOX_SLACK of a bin. */
static int offsets_reach(const double *G, const double *width, int o0, int o1,
                         int o2_from, int o2_to, double cut2) {
    const int from[3] = {o0, o1, o2_from}, to[3] = {o0, o1, o2_to};
    double lo[3], hi[3], mid[3];
    for (int d = 0; d < 3; d++) {
        double slack = BOX_SLACK * width[d];
        lo[d] = (from[d] - 1) * width[d] - slack;
        hi[d] = (to[d] + 1) * width[d] + slack;
        mid[d] = 0.5 * (from[d] + to[d]) * width[d];
    }
    double centre = 0.0; /* a point of the box: an upper bound, often enough */
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) centre += mid[a] * G[3 * a + b] * mid[b];
    if (centre < cut2) return 1;
    return box_min_norm2(G, lo, hi) < cut2;
}

/* The stencil rows, (o0, o1) in lexicographic order, each with the interval of
 * o2 that reaches (the set of such o2 is an interval: the minimum distance is
 * convex in the translation of a box). Offset -o reaches when o does, so the
 * second half of the rows mirrors the first. Returns the number of rows. */
static long build_stencil(const double *G, const double *width, const int *reach, double cut2,
                          stencil_row *rows) {
    const int w1 = 2 * reach[1] + 1;
    const long n_all = (long)(2 * reach[0] + 1) * w1;
    /* first pass: the interval of every row, in rows[k] for the k-th (o0, o1) */
    for (long k = 0; k < n_all; k++) {
        int o0 = (int)(k / w1) - reach[0], o1 = (int)(k % w1) - reach[1];
        stencil_row *row = rows + k;
        row->o0 = o0;
        row->o1 = o1;
        row->o2_lo = 1;
        row->o2_hi = 0; /* empty */
        if (k > n_all / 2) { /* mirror of row n_all - 1 - k */
            const stencil_row *m = rows + (n_all - 1 - k);
            if (m->o2_lo <= m->o2_hi) { row->o2_lo = -m->o2_hi; row->o2_hi = -m->o2_lo; }
            continue;
        }
        if (!offsets_reach(G, width, o0, o1, -reach[2], reach[2], cut2)) continue;
        int lo = -reach[2], hi = reach[2];
        while (lo <= hi && !offsets_reach(G, width, o0, o1, lo, lo, cut2)) lo++;
        while (hi > lo && !offsets_reach(G, width, o0, o1, hi, hi, cut2)) hi--;
        row->o2_lo = lo;
        row->o2_hi = hi;
    }
    long n_rows = 0; /* compact: drop the empty rows, keep the order */
    for (long k = 0; k < n_all; k++)
        if (rows[k].o2_lo <= rows[k].o2_hi) rows[n_rows++] = rows[k];
    return n_rows;
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

    long result = GM_ENOMEM;
    double *frac = malloc(sizeof(double) * 3 * (size_t)n_atoms);
    double *wrapped = malloc(sizeof(double) * 3 * (size_t)n_atoms); /* Cartesian, in the cell */
    int *bin_of = malloc(sizeof(int) * (size_t)n_atoms);
    int *sorted = malloc(sizeof(int) * (size_t)n_atoms);
    long *slot = malloc(sizeof(long) * (size_t)n_atoms); /* the copy of atom i in the padded grid */
    long *bin_start = NULL, *fill = NULL, *pad_start = NULL;
    int *ghost_atom = NULL, *pad_bin[3] = {NULL, NULL, NULL}, *pad_image[3] = {NULL, NULL, NULL};
    double *ghost_pos = NULL;
    stencil_row *rows = NULL;
    if (!frac || !wrapped || !bin_of || !sorted || !slot) goto done;

    /* Fractional coordinates s = r . inv (r = s . cell); wrapped where periodic,
     * with the Cartesian position moved by the same lattice vector. */
    for (int i = 0; i < n_atoms; i++) {
        const double *r = positions + 3 * i;
        double m[3] = {0.0, 0.0, 0.0};
        for (int d = 0; d < 3; d++) {
            double s = r[0] * inv[d] + r[1] * inv[3 + d] + r[2] * inv[6 + d];
            if (pbc[d]) {
                m[d] = floor(s);
                s -= m[d];
                if (s >= 1.0) { s -= 1.0; m[d] += 1.0; } /* 1 - eps rounded up to 1 */
                if (s < 0.0) s = 0.0;
            }
            frac[3 * i + d] = s;
        }
        for (int k = 0; k < 3; k++)
            wrapped[3 * i + k] = r[k] - (m[0] * cell[k] + m[1] * cell[3 + k] + m[2] * cell[6 + k]);
    }

    double lo[3], hi[3], width[3], span[3];
    int nbin[3], reach[3];
    for (int d = 0; d < 3; d++) {
        /* |column d of inv| is 1 / (distance between lattice planes d). */
        double b = sqrt(inv[d] * inv[d] + inv[3 + d] * inv[3 + d] + inv[6 + d] * inv[6 + d]);
        span[d] = cutoff * b;
        lo[d] = 0.0;
        hi[d] = 1.0;
        if (!pbc[d]) {
            lo[d] = hi[d] = frac[d];
            for (int i = 1; i < n_atoms; i++) {
                double s = frac[3 * i + d];
                if (s < lo[d]) lo[d] = s;
                if (s > hi[d]) hi[d] = s;
            }
        }
        double bins = floor(BINS_PER_CUTOFF * (hi[d] - lo[d]) / span[d]);
        nbin[d] = bins < 1.0 ? 1 : bins > 2.0 * n_atoms + 64 ? 2 * n_atoms + 64 : (int)bins;
    }
    /* cap the total: halve the largest count (the first of equals) */
    while ((double)nbin[0] * nbin[1] * nbin[2] > (double)MAX_BINS_PER_ATOM * n_atoms + 64) {
        int d = 0;
        if (nbin[1] > nbin[d]) d = 1;
        if (nbin[2] > nbin[d]) d = 2;
        nbin[d] = (nbin[d] + 1) / 2;
    }
    for (int d = 0; d < 3; d++) {
        double extent = hi[d] - lo[d];
        width[d] = (extent > 0.0 ? extent : 1.0) / nbin[d];
        /* farthest useful offset (the stencil prunes what this over-counts) */
        double r = floor(span[d] / width[d] * (1.0 + BOX_SLACK)) + 1.0;
        if (!pbc[d] && r > nbin[d] - 1) r = nbin[d] - 1;
        if (r > 1e6) goto done; /* absurd cutoff / cell ratio: refuse rather than loop */
        reach[d] = (int)r;
    }

    /* Bin the atoms: bin_start (CSR over bins), atom indices in bin order. */
    long total_bins = (long)nbin[0] * nbin[1] * nbin[2];
    bin_start = calloc((size_t)total_bins + 1, sizeof(long));
    fill = malloc(sizeof(long) * (size_t)total_bins);
    if (!bin_start || !fill) goto done;
    for (int i = 0; i < n_atoms; i++) {
        int idx[3];
        for (int d = 0; d < 3; d++) {
            double k = floor((frac[3 * i + d] - lo[d]) / width[d]);
            idx[d] = k < 0.0 ? 0 : k >= nbin[d] ? nbin[d] - 1 : (int)k;
        }
        bin_of[i] = (idx[0] * nbin[1] + idx[1]) * nbin[2] + idx[2];
        bin_start[bin_of[i] + 1]++;
    }
    for (long b = 0; b < total_bins; b++) bin_start[b + 1] += bin_start[b];
    for (long b = 0; b < total_bins; b++) fill[b] = bin_start[b];
    for (int i = 0; i < n_atoms; i++) sorted[fill[bin_of[i]]++] = i; /* increasing index */

    /* The padded grid: along a periodic direction, reach[d] bins of periodic
     * images on either side of the cell's bins (padded bin p is bin
     * (p - pad) mod nbin of image floor((p - pad) / nbin)). Every bin a centre
     * visits is then a real bin of the padded grid, and the o2 range of one
     * stencil row is one run of consecutive atoms. Ghost positions carry their
     * lattice shift, so a pair vector is one subtraction. */
    int pad[3], n_pad[3];
    double n_padded_bins = 1.0;
    for (int d = 0; d < 3; d++) {
        pad[d] = pbc[d] ? reach[d] : 0;
        n_pad[d] = nbin[d] + 2 * pad[d];
        n_padded_bins *= n_pad[d];
        pad_bin[d] = malloc(sizeof(int) * (size_t)n_pad[d]);
        pad_image[d] = malloc(sizeof(int) * (size_t)n_pad[d]);
        if (!pad_bin[d] || !pad_image[d]) goto done;
        for (int p = 0; p < n_pad[d]; p++) {
            int t = p - pad[d];
            int n = t >= 0 ? t / nbin[d] : -((-t + nbin[d] - 1) / nbin[d]);
            pad_bin[d][p] = t - n * nbin[d];
            pad_image[d][p] = n;
        }
    }
    if (n_padded_bins > 1e9) goto done; /* cutoff absurdly larger than the cell */
    const long total_padded = (long)n_padded_bins;
    pad_start = malloc(sizeof(long) * ((size_t)total_padded + 1));
    if (!pad_start) goto done;
    pad_start[0] = 0;
    for (long pb = 0; pb < total_padded; pb++) {
        int p2 = (int)(pb % n_pad[2]), p1 = (int)(pb / n_pad[2] % n_pad[1]);
        int p0 = (int)(pb / n_pad[2] / n_pad[1]);
        long b = ((long)pad_bin[0][p0] * nbin[1] + pad_bin[1][p1]) * nbin[2] + pad_bin[2][p2];
        pad_start[pb + 1] = pad_start[pb] + bin_start[b + 1] - bin_start[b];
    }
    ghost_atom = malloc(sizeof(int) * (size_t)pad_start[total_padded] + 1);
    ghost_pos = malloc(sizeof(double) * 3 * (size_t)pad_start[total_padded] + 1);
    if (!ghost_atom || !ghost_pos) goto done;
    for (long pb = 0; pb < total_padded; pb++) {
        int p2 = (int)(pb % n_pad[2]), p1 = (int)(pb / n_pad[2] % n_pad[1]);
        int p0 = (int)(pb / n_pad[2] / n_pad[1]);
        long b = ((long)pad_bin[0][p0] * nbin[1] + pad_bin[1][p1]) * nbin[2] + pad_bin[2][p2];
        int n0 = pad_image[0][p0], n1 = pad_image[1][p1], n2 = pad_image[2][p2];
        double shift[3];
        for (int k = 0; k < 3; k++) shift[k] = n0 * cell[k] + n1 * cell[3 + k] + n2 * cell[6 + k];
        long g = pad_start[pb];
        for (long q = bin_start[b]; q < bin_start[b + 1]; q++, g++) {
            int j = sorted[q];
            ghost_atom[g] = j;
            for (int k = 0; k < 3; k++) ghost_pos[3 * g + k] = wrapped[3 * j + k] + shift[k];
            if (n0 == 0 && n1 == 0 && n2 == 0) slot[j] = g;
        }
    }

    /* The stencil: offset rows (o0, o1) and the range of o2 whose boxes come
     * closer than the cutoff. */
    double G[9];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            G[3 * a + b] = cell[3 * a] * cell[3 * b] + cell[3 * a + 1] * cell[3 * b + 1] +
                           cell[3 * a + 2] * cell[3 * b + 2];
    const double cut2 = cutoff * cutoff;
    rows = malloc(sizeof(stencil_row) * (size_t)(2 * reach[0] + 1) * (size_t)(2 * reach[1] + 1));
    if (!rows) goto done;
    long n_rows = build_stencil(G, width, reach, cut2, rows);

    long count = 0;
    for (int i = 0; i < n_atoms; i++) {
        int c0 = bin_of[i] / (nbin[1] * nbin[2]) + pad[0];
        int c1 = (bin_of[i] / nbin[2]) % nbin[1] + pad[1];
        int c2 = bin_of[i] % nbin[2] + pad[2];
        const double *xi = wrapped + 3 * i;
        const long gi = slot[i];
        for (long s = 0; s < n_rows; s++) {
            const stencil_row *row = rows + s;
            int p0 = c0 + row->o0, p1 = c1 + row->o1;
            if (p0 < 0 || p0 >= n_pad[0] || p1 < 0 || p1 >= n_pad[1]) continue; /* open directions */
            int lo2 = c2 + row->o2_lo, hi2 = c2 + row->o2_hi;
            if (lo2 < 0) lo2 = 0;
            if (hi2 >= n_pad[2]) hi2 = n_pad[2] - 1;
            if (lo2 > hi2) continue;
            long base = ((long)p0 * n_pad[1] + p1) * n_pad[2];
            long g_end = pad_start[base + hi2 + 1];
            for (long g = pad_start[base + lo2]; g < g_end; g++) {
                double v0 = ghost_pos[3 * g] - xi[0];
                double v1 = ghost_pos[3 * g + 1] - xi[1];
                double v2 = ghost_pos[3 * g + 2] - xi[2];
                double r2 = v0 * v0 + v1 * v1 + v2 * v2;
                /* Branch-free: the candidate is written at `count` in any case and
                 * kept by advancing `count` (about 1 in 4 is). */
                if (count < capacity) {
                    pair_first[count] = i;
                    pair_second[count] = ghost_atom[g];
                    vectors[3 * count] = v0;
                    vectors[3 * count + 1] = v1;
                    vectors[3 * count + 2] = v2;
                }
                count += (r2 < cut2) & (g != gi);
            }
        }
    }
    result = count;

done:
    free(frac); free(wrapped); free(bin_of); free(sorted); free(slot);
    free(bin_start); free(fill); free(pad_start); free(ghost_atom); free(ghost_pos); free(rows);
    for (int d = 0; d < 3; d++) { free(pad_bin[d]); free(pad_image[d]); }
    return result;
}
