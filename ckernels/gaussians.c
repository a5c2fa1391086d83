/* Sums of Gaussian hills in symmetry-function space, with rigorous pruning.
 * See gmetad.h for the contract.
 *
 * This file is compiled twice: as it is (the baseline x86-64 build, SSE2) and,
 * through gaussians_avx2.c, for AVX2 + FMA; dispatch.c picks one at run time.
 * GM_VARIANT names the copy.
 *
 * Loop order: hills outer, queries inner. The queries are processed in chunks
 * (one or more per thread). Per block of hills, the queries the block test keeps
 * are gathered, transposed (dim x m, m padded to a multiple of 8), and every hill
 * of the block is applied to all of them at once:
 *   d = g - mu           (centred differences, contiguous, formed in registers)
 *   y  = A d, q = d.y    (register-tiled D x D by D x m product; FMA on AVX2;
 *                         isotropic hills: q = |d|^2 / sigma^2)
 *   w  = h exp(-q/2)     (vectorised exp, gm_vexp)
 *   V += w, dV/dg -= w y (accumulated in the block's own column order: no scatter)
 * Isotropic hills: |d|^2 for 16 queries at a time, the gradient of up to 32 hills
 * applied together as g sum_s f_s - sum_s f_s mu_s (iso_gradient).
 * The per-hill bound min_eig |g - mu|^2 > q_cut needs |g - mu|^2, which is only
 * computed when the block bound shows that some hill of the block may fail it.
 * Pruned pairs get weight exactly 0. Per query every sum runs over the same terms
 * in the same order whatever the other queries of the chunk are, so results are
 * bit-identical run to run, for any chunking and any number of threads; they
 * depend only on the build and on the code path (baseline or AVX2). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__FMA__)
#include <immintrin.h>
#endif

#include "gmetad.h"
#include "variants.h"

#ifndef GM_VARIANT
#define GM_VARIANT base
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

/* Queries per chunk: scratch is about 4 * dim * QCHUNK doubles per thread. */
#define QCHUNK 64
/* Columns per vector tile: two vectors of four doubles. */
#define JT 8

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
static inline v4d load4(const double *p) { v4d v; memcpy(&v, p, sizeof v); return v; }
static inline void store4(double *p, v4d x) { memcpy(p, &x, sizeof x); }
static inline v4d bcast(double x) { v4d v = {x, x, x, x}; return v; }
static inline v4l bcast_l(long long x) { v4l v = {x, x, x, x}; return v; }

#if defined(__FMA__)
/* c + a * b with one rounding */
#define VFMA(a, b, c) ((v4d)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#define WIDE_TILES 1
#else
#define VFMA(a, b, c) ((c) + (a) * (b))
#define WIDE_TILES 0
#endif

/* exp(x) for x <= 0, lane-wise: x = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor
 * series to r^13 (truncation below 1e-17 relative), 2^n from the exponent bits.
 * x < -708 gives 0 (below the smallest normal double). Within 2 ulp of exp. */
static inline v4d gm_vexp(v4d x) {
    const v4d log2e = bcast(1.4426950408889634), shift = bcast(6755399441055744.0); /* 1.5 * 2^52 */
    const v4d ln2_hi = bcast(0.693147180369123816490), ln2_lo = bcast(1.90821492927058770002e-10);
    const v4d lo = bcast(-708.0);
    const v4l under = x < lo;
    x = (v4d)(((v4l)x & ~under) | ((v4l)lo & under));
    const v4d t = VFMA(x, log2e, shift);
    const v4d n = t - shift;
    v4d r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    v4d p = bcast(1.0 / 6227020800.0);             /* 1/13! */
    p = VFMA(p, r, bcast(1.0 / 479001600.0));     /* 1/12! */
    p = VFMA(p, r, bcast(1.0 / 39916800.0));
    p = VFMA(p, r, bcast(1.0 / 3628800.0));
    p = VFMA(p, r, bcast(1.0 / 362880.0));
    p = VFMA(p, r, bcast(1.0 / 40320.0));
    p = VFMA(p, r, bcast(1.0 / 5040.0));
    p = VFMA(p, r, bcast(1.0 / 720.0));
    p = VFMA(p, r, bcast(1.0 / 120.0));
    p = VFMA(p, r, bcast(1.0 / 24.0));
    p = VFMA(p, r, bcast(1.0 / 6.0));
    p = VFMA(p, r, bcast(0.5));
    p = VFMA(p, r, bcast(1.0));
    p = VFMA(p, r, bcast(1.0));
    const v4l bias = {1023, 1023, 1023, 1023};
    const v4d scale = (v4d)(((v4l)t + bias) << 52);
    return (v4d)((v4l)(p * scale) & ~under);
}

/* One register tile of the product: rows r0 .. r0+R-1 of y = A d for columns
 * j .. j+7, d = g - mu formed on the fly from the transposed queries gq (never
 * stored), then q[j..j+7] += y[r] * d[r] for those rows in ascending order. */
#define DEFINE_TILE(R)                                                                     \
    static inline void tile##R(int dim, int r0, int j, int ld, const double *a,           \
                               const double *mu, const double *gq, double *y, double *q) { \
        v4d c[R][2];                                                                       \
        for (int t = 0; t < R; t++) c[t][0] = c[t][1] = bcast(0.0);                        \
        for (int k = 0; k < dim; k++) {                                                    \
            const double *g = gq + (size_t)k * ld + j;                                     \
            const double *ak = a + (size_t)k * dim + r0; /* A[r0 + t][k], A symmetric */  \
            const v4d m = bcast(mu[k]);                                                    \
            const v4d d0 = load4(g) - m, d1 = load4(g + 4) - m;                            \
            for (int t = 0; t < R; t++) {                                                  \
                const v4d b = bcast(ak[t]);                                                \
                c[t][0] = VFMA(b, d0, c[t][0]);                                            \
                c[t][1] = VFMA(b, d1, c[t][1]);                                            \
            }                                                                              \
        }                                                                                  \
        v4d q0 = load4(q + j), q1 = load4(q + j + 4);                                      \
        for (int t = 0; t < R; t++) {                                                      \
            double *yr = y + (size_t)(r0 + t) * ld + j;                                    \
            const double *g = gq + (size_t)(r0 + t) * ld + j;                              \
            const v4d m = bcast(mu[r0 + t]);                                               \
            store4(yr, c[t][0]);                                                           \
            store4(yr + 4, c[t][1]);                                                       \
            q0 = VFMA(c[t][0], load4(g) - m, q0);                                          \
            q1 = VFMA(c[t][1], load4(g + 4) - m, q1);                                      \
        }                                                                                  \
        store4(q + j, q0);                                                                 \
        store4(q + j + 4, q1);                                                             \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
#if WIDE_TILES
DEFINE_TILE(4)
DEFINE_TILE(6)
#endif

#if !WIDE_TILES
/* The baseline build (SSE2: half-width registers, no FMA) instead reads d = g - mu
 * from a buffer dt formed once per hill: on the fly, its subtractions would cost a
 * third as many instructions as the product itself. Same sums, same order. */
#define DEFINE_TILE_D(R)                                                                   \
    static inline void tiled##R(int dim, int r0, int j, int ld, const double *a,          \
                                const double *dt, double *y, double *q) {                  \
        v4d c[R][2];                                                                       \
        for (int t = 0; t < R; t++) c[t][0] = c[t][1] = bcast(0.0);                        \
        for (int k = 0; k < dim; k++) {                                                    \
            const double *d = dt + (size_t)k * ld + j;                                     \
            const double *ak = a + (size_t)k * dim + r0;                                   \
            const v4d d0 = load4(d), d1 = load4(d + 4);                                    \
            for (int t = 0; t < R; t++) {                                                  \
                const v4d b = bcast(ak[t]);                                                \
                c[t][0] = VFMA(b, d0, c[t][0]);                                            \
                c[t][1] = VFMA(b, d1, c[t][1]);                                            \
            }                                                                              \
        }                                                                                  \
        v4d q0 = load4(q + j), q1 = load4(q + j + 4);                                      \
        for (int t = 0; t < R; t++) {                                                      \
            double *yr = y + (size_t)(r0 + t) * ld + j;                                    \
            const double *d = dt + (size_t)(r0 + t) * ld + j;                              \
            store4(yr, c[t][0]);                                                           \
            store4(yr + 4, c[t][1]);                                                       \
            q0 = VFMA(c[t][0], load4(d), q0);                                              \
            q1 = VFMA(c[t][1], load4(d + 4), q1);                                          \
        }                                                                                  \
        store4(q + j, q0);                                                                 \
        store4(q + j + 4, q1);                                                             \
    }
DEFINE_TILE_D(1)
DEFINE_TILE_D(2)
#endif

/* y = A (g - mu) (dim x m, row stride ld; g: the transposed queries gq) and
 * q[j] = sum_r y[r][j] (g - mu)[r][j] (r ascending, from 0.0), for m a multiple of
 * JT. Row tiles of 6 and 4 rows with FMA (16 and 12 of the 16 AVX registers); in
 * the baseline build, of 2 rows from the buffer dt (8 of the 16 half-width SSE2
 * registers hold the tile; 3 rows spill and are slower). */
static void quadratic_forms(int dim, int m, int ld, const double *a, const double *mu,
                            const double *gq, double *y, double *q, const char *next, double *dt) {
    for (int j = 0; j < m; j++) q[j] = 0.0;
#if !WIDE_TILES
    for (int k = 0; k < dim; k++) {
        const v4d mk = bcast(mu[k]);
        for (int j = 0; j < m; j += 4) store4(dt + (size_t)k * ld + j, load4(gq + (size_t)k * ld + j) - mk);
    }
    (void)next;
    int r = 0;
    for (; r + 2 <= dim; r += 2)
        for (int j = 0; j < m; j += JT) tiled2(dim, r, j, ld, a, dt, y, q);
    for (; r < dim; r++)
        for (int j = 0; j < m; j += JT) tiled1(dim, r, j, ld, a, dt, y, q);
#else
    (void)dt;
    /* the next hill's metric (hills come in block order, scattered in memory) is
     * fetched a few cache lines per tile, spread over this hill's product */
    const size_t next_bytes = next ? sizeof(double) * (size_t)dim * dim : 0;
    size_t pf = 0;
#define PREFETCH_NEXT()                                                             \
    if (pf < next_bytes) {                                                          \
        __builtin_prefetch(next + pf);                                              \
        __builtin_prefetch(next + pf + 64);                                         \
        __builtin_prefetch(next + pf + 128);                                        \
        pf += 192;                                                                  \
    }
    int r = 0;
    int n6 = dim / 6, rest = dim % 6;
    if (rest == 2 && n6 > 0) { n6--; rest += 6; } /* 26 = 6 + 6 + 6 + 4 + 4 */
    for (int b = 0; b < n6; b++, r += 6)
        for (int j = 0; j < m; j += JT) { PREFETCH_NEXT() tile6(dim, r, j, ld, a, mu, gq, y, q); }
    for (; r + 4 <= dim; r += 4)
        for (int j = 0; j < m; j += JT) { PREFETCH_NEXT() tile4(dim, r, j, ld, a, mu, gq, y, q); }
    for (; r + 2 <= dim; r += 2)
        for (int j = 0; j < m; j += JT) { PREFETCH_NEXT() tile2(dim, r, j, ld, a, mu, gq, y, q); }
    for (; r < dim; r++)
        for (int j = 0; j < m; j += JT) { PREFETCH_NEXT() tile1(dim, r, j, ld, a, mu, gq, y, q); }
#undef PREFETCH_NEXT
#endif
}

/* d2[j] = |g_j - mu|^2 (k ascending, from 0.0) for the columns j0 <= j < j1 of the
 * transposed queries gq (j0, j1 multiples of 4). Each column's sum is one dependent
 * chain of dim FMAs, so 16 columns (4 chains) are advanced together to hide the FMA
 * latency; the order of every column's terms does not depend on the grouping. */
static void squared_distances(int dim, int j0, int j1, int ld, const double *mu, const double *gq,
                              double *d2) {
    int j = j0;
    for (; j + 16 <= j1; j += 16) {
        v4d a0 = bcast(0.0), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < dim; k++) {
            const double *g = gq + (size_t)k * ld + j;
            const v4d mk = bcast(mu[k]);
            const v4d d0 = load4(g) - mk, d1 = load4(g + 4) - mk;
            const v4d e0 = load4(g + 8) - mk, e1 = load4(g + 12) - mk;
            a0 = VFMA(d0, d0, a0);
            a1 = VFMA(d1, d1, a1);
            a2 = VFMA(e0, e0, a2);
            a3 = VFMA(e1, e1, a3);
        }
        store4(d2 + j, a0);
        store4(d2 + j + 4, a1);
        store4(d2 + j + 8, a2);
        store4(d2 + j + 12, a3);
    }
    for (; j + 8 <= j1; j += 8) {
        v4d a0 = bcast(0.0), a1 = a0;
        for (int k = 0; k < dim; k++) {
            const double *g = gq + (size_t)k * ld + j;
            const v4d mk = bcast(mu[k]);
            const v4d d0 = load4(g) - mk, d1 = load4(g + 4) - mk;
            a0 = VFMA(d0, d0, a0);
            a1 = VFMA(d1, d1, a1);
        }
        store4(d2 + j, a0);
        store4(d2 + j + 4, a1);
    }
    for (; j < j1; j += 4) {
        v4d a0 = bcast(0.0);
        for (int k = 0; k < dim; k++) {
            const v4d d0 = load4(gq + (size_t)k * ld + j) - bcast(mu[k]);
            a0 = VFMA(d0, d0, a0);
        }
        store4(d2 + j, a0);
    }
}

/* Isotropic hills per group of this many: their gradient factors are kept and
 * applied together by iso_gradient. */
#define ISUB 32
/* Rows of the gradient kept in registers by iso_gradient (16 or 8 vector registers). */
#if WIDE_TILES
#define KB 8
#else
#define KB 4
#endif

/* bg[k][j] += sum_t f[t][j] (g[k][j] - mu_t[k]) over the nt hills hill[0..nt-1],
 * for every group of 4 columns j (f = 0 where the flag on[t][j/4] is clear: those
 * terms are skipped), evaluated as g[k][j] F[j] - M[k][j] with F = sum_t f[t] and
 * M[k] = sum_t f[t] mu_t[k] (t ascending): two operations per term instead of
 * three. Rows are done KB at a time with M in registers. The rounding differs from
 * the term-by-term sum by a few ulp of |g| sum_t |f_t| (|g - mu| is rarely below
 * 1e-3 |g| for a hill within reach, so this stays far below 1e-12 of the gradient;
 * tested against numpy); it does not depend on how the queries are grouped. */
static void iso_gradient(int dim, int m, int ld, int nt, const int *hill, const double *centres,
                         const double *f, const unsigned char *on, const double *gq, double *bg) {
    const int groups = ld / 4;
    for (int j = 0; j < m; j += 4) {
        v4d fsum = bcast(0.0);
        int any = 0;
        for (int t = 0; t < nt; t++)
            if (on[(size_t)t * groups + j / 4]) {
                fsum += load4(f + (size_t)t * ld + j);
                any = 1;
            }
        if (!any) continue;
        int k = 0;
        for (; k + KB <= dim; k += KB) {
            v4d acc[KB];
            for (int r = 0; r < KB; r++) acc[r] = bcast(0.0);
            for (int t = 0; t < nt; t++) {
                if (!on[(size_t)t * groups + j / 4]) continue;
                const v4d ft = load4(f + (size_t)t * ld + j);
                const double *mu = centres + (size_t)hill[t] * dim + k;
                for (int r = 0; r < KB; r++) acc[r] = VFMA(ft, bcast(mu[r]), acc[r]);
            }
            for (int r = 0; r < KB; r++) {
                double *b = bg + (size_t)(k + r) * ld + j;
                store4(b, load4(b) + (VFMA(fsum, load4(gq + (size_t)(k + r) * ld + j), -acc[r])));
            }
        }
        for (; k < dim; k++) {
            v4d acc = bcast(0.0);
            for (int t = 0; t < nt; t++) {
                if (!on[(size_t)t * groups + j / 4]) continue;
                acc = VFMA(load4(f + (size_t)t * ld + j), bcast(centres[(size_t)hill[t] * dim + k]), acc);
            }
            double *b = bg + (size_t)k * ld + j;
            store4(b, load4(b) + VFMA(fsum, load4(gq + (size_t)k * ld + j), -acc));
        }
    }
}

/* Scratch of one thread, for chunks of up to ld queries (ld a multiple of JT). */
typedef struct {
    int ld;
    double *qt;    /* dim x ld: the chunk's queries, transposed */
    double *gq;    /* dim x ld: the block's live queries, transposed */
    double *y;     /* dim x ld: A (g - mu) */
    double *dt;    /* dim x ld: g - mu (baseline build only) */
    double *bg;    /* dim x ld: the block's gradient accumulators */
    double *gt;    /* dim x ld: the chunk's gradient accumulators, by chunk position */
    double *q, *w, *d2, *bv, *v, *near_q, *bd; /* ld each */
    int *live;     /* ld: chunk positions of the block's live queries */
    int *near_i;   /* ld */
    double *f;     /* ISUB x ld: isotropic gradient factors -w / sigma^2 of ISUB hills */
    unsigned char *on; /* ISUB x ld/4: whether a group of 4 columns has a nonzero factor */
} scratch_t;

static long sum_chunk(int dim, int nq, const double *query, int n_hills,
                      const double *centres, const double *heights,
                      const double *inv_cov, const double *inv_var,
                      const double *min_eig, int n_blocks, const int *order,
                      const int *block_first, const int *block_count,
                      const double *block_centre, const double *block_radius,
                      const double *block_min_eig, double q_cut, double *energy,
                      double *gradient, int *nearest, double *nearest_q, scratch_t *w) {
    const int ld = w->ld;
    const int prune = q_cut > 0.0;
    const int nb = n_blocks > 0 ? n_blocks : 1;
    long evaluated = 0;
    for (int i = 0; i < nq; i++) { w->v[i] = 0.0; w->near_q[i] = INFINITY; w->near_i[i] = -1; }
    if (gradient) memset(w->gt, 0, sizeof(double) * (size_t)dim * ld);
    /* the chunk's queries transposed (dim x ld, zero padding): block distances are
     * computed from them vectorised, and the live queries gathered from them */
    const int mq = (nq + JT - 1) / JT * JT;
    for (int k = 0; k < dim; k++) {
        double *row = w->qt + (size_t)k * ld;
        for (int i = 0; i < nq; i++) row[i] = query[(size_t)i * dim + k];
        for (int i = nq; i < mq; i++) row[i] = 0.0;
    }
    for (int blk = 0; blk < nb; blk++) {
        const int first = n_blocks > 0 ? block_first[blk] : 0;
        const int count = n_blocks > 0 ? block_count[blk] : n_hills;
        if (count <= 0) continue;
        /* does any hill of the block fail the per-hill test for some live query?
         * Only then is |g - mu|^2 needed (isotropic hills always need it). */
        double max_min_eig = 0.0;
        if (prune && min_eig)
            for (int t = 0; t < count; t++) {
                const int s = n_blocks > 0 ? order[first + t] : t;
                if (min_eig[s] > max_min_eig) max_min_eig = min_eig[s];
            }
        /* per_hill: whether the per-hill bound may drop a hill of this block */
        int n_live = 0, per_hill = prune && min_eig && n_blocks == 0;
        if (prune && n_blocks > 0) squared_distances(dim, 0, mq, ld, block_centre + (size_t)blk * dim, w->qt, w->bd);
        for (int i = 0; i < nq; i++) {
            if (prune && n_blocks > 0) {
                const double dist = sqrt(w->bd[i]);
                const double gap = dist - block_radius[blk];
                if (gap > 0.0 && block_min_eig[blk] * gap * gap > q_cut) continue;
                const double reach = dist + block_radius[blk];
                /* margin: no hill passing this test can fail the computed one */
                if (min_eig && max_min_eig * reach * reach * (1.0 + 1e-9) > q_cut) per_hill = 1;
                w->w[n_live] = dist;
            }
            w->live[n_live++] = i;
        }
        if (n_live == 0) continue;
        int moved = 0;
        if (per_hill && n_blocks > 0) {
            /* queries in order of distance to the block (ties: chunk order), so that
             * the 4 lanes of a vector tend to be pruned together; each query's sums
             * do not depend on its lane */
            for (int l = 1; l < n_live; l++) {
                const double dl = w->w[l];
                const int il = w->live[l];
                int k = l;
                for (; k > 0 && w->w[k - 1] > dl; k--) {
                    w->w[k] = w->w[k - 1];
                    w->live[k] = w->live[k - 1];
                    moved = 1;
                }
                w->w[k] = dl;
                w->live[k] = il;
            }
        }
        const int m = (n_live + JT - 1) / JT * JT;
        /* the live queries, transposed; padding columns are zeros (their results are
         * computed and never used). All queries in chunk order: the chunk's own. */
        const int identity = n_live == nq && !moved;
        const double *gq = w->qt;
        if (!identity) {
            for (int k = 0; k < dim; k++) {
                double *row = w->gq + (size_t)k * ld;
                const double *src = w->qt + (size_t)k * ld;
                for (int l = 0; l < n_live; l++) row[l] = src[w->live[l]];
                for (int l = n_live; l < m; l++) row[l] = 0.0;
            }
            gq = w->gq;
        }
        for (int l = 0; l < m; l++) w->bv[l] = 0.0;
        if (gradient)
            for (int k = 0; k < dim; k++) memset(w->bg + (size_t)k * ld, 0, sizeof(double) * m);
        int sub_hill[ISUB];
        for (int t = 0; t < count; t++) {
            const int s = n_blocks > 0 && order ? order[first + t] : t;
            const double *mu = centres + (size_t)s * dim;
            const v4d h = bcast(heights[s]), half = bcast(-0.5);
            int kept = n_live;
            if (!inv_cov) {
                /* isotropic: O(dim) per pair; g - mu recomputed, never stored. The
                 * gradient terms -w/sigma^2 (g - mu) are applied per ISUB hills
                 * (iso_gradient), in hill order, from the factors kept here. */
                const v4d iv = bcast(inv_var[s]), cut = bcast(q_cut), e = bcast(min_eig ? min_eig[s] : 0.0);
                const int sub = t % ISUB;
                double *f = w->f + (size_t)sub * ld;
                unsigned char *on = w->on + (size_t)sub * (ld / 4);
                sub_hill[sub] = s;
                squared_distances(dim, 0, m, ld, mu, gq, w->d2);
                v4l n_kept = {0, 0, 0, 0};  /* minus the kept live queries, per lane */
                for (int j = 0; j < m; j += 4) {
                    const v4d d2 = load4(w->d2 + j);
                    const v4d q = iv * d2;
                    store4(w->q + j, q);
                    v4l pruned = {0, 0, 0, 0};
                    on[j / 4] = 0;
                    if (per_hill) {
                        pruned = (v4l)(e * d2 > cut);
                        if (pruned[0] & pruned[1] & pruned[2] & pruned[3]) continue; /* weight 0 */
                    }
                    const v4d wt = (v4d)((v4l)(h * gm_vexp(half * q)) & ~pruned);
                    store4(w->bv + j, load4(w->bv + j) + wt);
                    store4(f + j, -(wt * iv));
                    on[j / 4] = 1;
                    const v4l lane = {j, j + 1, j + 2, j + 3}, live = bcast_l(n_live);
                    n_kept += (lane < live) & ~pruned;
                }
                if (per_hill) kept = -(int)(n_kept[0] + n_kept[1] + n_kept[2] + n_kept[3]);
                if (gradient && (sub == ISUB - 1 || t == count - 1))
                    iso_gradient(dim, m, ld, sub + 1, sub_hill, centres, w->f, w->on, gq, w->bg);
            } else {
                const char *next = NULL;
                if (t + 1 < count) {
                    const int s1 = n_blocks > 0 && order ? order[first + t + 1] : t + 1;
                    next = (const char *)(inv_cov + (size_t)s1 * dim * dim);
                }
                if (per_hill) squared_distances(dim, 0, m, ld, mu, gq, w->d2);
                quadratic_forms(dim, m, ld, inv_cov + (size_t)s * dim * dim, mu, gq, w->y, w->q, next, w->dt);
                for (int j = 0; j < m; j += 4) store4(w->w + j, h * gm_vexp(half * load4(w->q + j)));
                if (per_hill)
                    for (int l = 0; l < n_live; l++)
                        if (min_eig[s] * w->d2[l] > q_cut) w->w[l] = 0.0;
                for (int j = 0; j < m; j += 4) store4(w->bv + j, load4(w->bv + j) + load4(w->w + j));
                if (gradient)
                    for (int k = 0; k < dim; k++) {
                        double *gk = w->bg + (size_t)k * ld;
                        const double *yk = w->y + (size_t)k * ld;
                        for (int j = 0; j < m; j += 4)
                            store4(gk + j, VFMA(-load4(w->w + j), load4(yk + j), load4(gk + j)));
                    }
            }
            if (per_hill && inv_cov) {
                kept = 0;
                for (int l = 0; l < n_live; l++) kept += !(min_eig[s] * w->d2[l] > q_cut);
            }
            evaluated += kept;
            if (nearest)
                for (int l = 0; l < n_live; l++) {
                    if (per_hill && min_eig[s] * w->d2[l] > q_cut) continue;
                    const int i = w->live[l];
                    const double ql = w->q[l];
                    if (ql < w->near_q[i] || (ql == w->near_q[i] && s < w->near_i[i])) {
                        w->near_q[i] = ql;
                        w->near_i[i] = s;
                    }
                }
        }
        /* the block's sums into the chunk's, once per block */
        if (identity) {
            for (int l = 0; l < n_live; l++) w->v[l] += w->bv[l];
            if (gradient)
                for (int k = 0; k < dim; k++) {
                    double *gk = w->gt + (size_t)k * ld;
                    const double *bk = w->bg + (size_t)k * ld;
                    for (int l = 0; l < n_live; l++) gk[l] += bk[l];
                }
        } else {
            for (int l = 0; l < n_live; l++) w->v[w->live[l]] += w->bv[l];
            if (gradient)
                for (int k = 0; k < dim; k++) {
                    double *gk = w->gt + (size_t)k * ld;
                    const double *bk = w->bg + (size_t)k * ld;
                    for (int l = 0; l < n_live; l++) gk[w->live[l]] += bk[l];
                }
        }
    }
    for (int i = 0; i < nq; i++) energy[i] = w->v[i];
    if (gradient)
        for (int i = 0; i < nq; i++)
            for (int k = 0; k < dim; k++) gradient[(size_t)i * dim + k] = w->gt[(size_t)k * ld + i];
    if (nearest)
        for (int i = 0; i < nq; i++) {
            nearest[i] = w->near_i[i];
            if (nearest_q) nearest_q[i] = w->near_q[i];
        }
    return evaluated;
}

#define GM_CAT2(a, b) a##_##b
#define GM_CAT(a, b) GM_CAT2(a, b)

int GM_CAT(gm_gaussian_sum, GM_VARIANT)(
    int n_query, int dim, const double *query, int n_hills, const double *centres,
    const double *heights, const double *inv_cov, const double *inv_var, const double *min_eig,
    int n_blocks, const int *order, const int *block_first, const int *block_count,
    const double *block_centre, const double *block_radius, const double *block_min_eig,
    double q_cut, double *energy, double *gradient, int *nearest, double *nearest_q,
    long *n_evaluated) {
    if (n_query < 0 || dim <= 0 || n_hills < 0 || n_blocks < 0) return GM_EINVAL;
    if (!inv_cov && !inv_var && n_hills > 0) return GM_EINVAL;
    if (n_blocks > 0 && (!order || !block_first || !block_count || !block_centre ||
                         !block_radius || !block_min_eig))
        return GM_EINVAL;
    long total = 0;
    int failed = 0;
    /* Threads only pay off for large sums; small ones (one biased atom, few
     * hills) lose more to waking and spinning threads than they gain, all the
     * more on a machine shared with i-PI and the force engine. Results do not
     * depend on the number of threads. */
    const int parallel = (double)n_query * n_hills * dim * (inv_cov ? dim : 1) > 2.0e6;
#pragma omp parallel reduction(+ : total) if (parallel)
    {
        int n_threads = 1;
#ifdef _OPENMP
        n_threads = omp_get_num_threads();
#endif
        /* one chunk per thread when the queries are few, chunks of QCHUNK otherwise */
        int chunk = (n_query + n_threads - 1) / n_threads;
        if (chunk > QCHUNK) chunk = QCHUNK;
        if (chunk < 1) chunk = 1;
        const int n_chunks = (n_query + chunk - 1) / chunk;
        scratch_t w;
        memset(&w, 0, sizeof w);
        const int ld = (chunk + JT - 1) / JT * JT;
        w.ld = ld;
        double *buf = malloc(sizeof(double) * ((size_t)6 * dim * ld + (7 + ISUB) * (size_t)ld));
        int *ibuf = malloc(sizeof(int) * 2 * (size_t)ld + (size_t)ISUB * ld / 4);
        if (buf && ibuf) {
            w.gq = buf;
            w.y = w.gq + (size_t)dim * ld;
            w.bg = w.y + (size_t)dim * ld;
            w.gt = w.bg + (size_t)dim * ld;
            w.q = w.gt + (size_t)dim * ld;
            w.w = w.q + ld;
            w.d2 = w.w + ld;
            w.bv = w.d2 + ld;
            w.v = w.bv + ld;
            w.near_q = w.v + ld;
            w.bd = w.near_q + ld;
            w.f = w.bd + ld;
            w.qt = w.f + (size_t)ISUB * ld;
            w.dt = w.qt + (size_t)dim * ld;
            w.live = ibuf;
            w.near_i = ibuf + ld;
            w.on = (unsigned char *)(ibuf + 2 * (size_t)ld);
        }
#pragma omp for schedule(dynamic, 1)
        for (int c = 0; c < n_chunks; c++) {
            if (!buf || !ibuf) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const int i0 = c * chunk;
            const int nq = n_query - i0 < chunk ? n_query - i0 : chunk;
            total += sum_chunk(dim, nq, query + (size_t)i0 * dim, n_hills, centres, heights,
                               inv_cov, inv_var, min_eig, n_blocks, order, block_first,
                               block_count, block_centre, block_radius, block_min_eig, q_cut,
                               energy + i0, gradient ? gradient + (size_t)i0 * dim : NULL,
                               nearest ? nearest + i0 : NULL, nearest_q ? nearest_q + i0 : NULL,
                               &w);
        }
        free(buf);
        free(ibuf);
    }
    if (failed) return GM_ENOMEM;
    if (n_evaluated) *n_evaluated = total;
    return GM_OK;
}
