/* The hills kernel before the FMA/AVX2 restructuring (ckernels/gaussians.c of commit
 * fdfa6fc, unchanged but for this comment and the header lines below), kept so that
 * benchmarks/bench_bias.py can time it against the current kernel in the same run.
 * Built by benchmarks/reference_kernel.py into a benchmark-only cffi module; not part
 * of the package. Built with -DGM_BASELINE_ONLY (the one other change), it has no AVX2
 * clone: what a CPU without AVX2 ran. */
/* Sums of Gaussian hills in symmetry-function space, with rigorous pruning.
 * See gmetad.h for the contract.
 *
 * Loop order: hills outer, queries inner. The queries are processed in chunks
 * (one or more per thread); every hill (its D x D metric, 5.4 kB for D = 26) is
 * read once per chunk instead of once per query, and the quadratic forms of one
 * hill against all live queries of the chunk are computed together, vectorised
 * across queries (a D x D by D x m product). Per query, every sum runs over the
 * same terms in the same order as a plain one-query-at-a-time loop (no
 * reassociation), so results do not depend on the chunking or on the number of
 * threads. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define GM_OK 0
#define GM_EINVAL -1
#define GM_ENOMEM -3
int gm_gaussian_sum(int n_query, int dim, const double *query, int n_hills,
                    const double *centres, const double *heights,
                    const double *inv_cov, const double *inv_var,
                    const double *min_eig, int n_blocks, const int *order,
                    const int *block_start, const double *block_centre,
                    const double *block_radius, const double *block_min_eig,
                    double q_cut, double *energy, double *gradient,
                    long *n_evaluated);

/* Queries per chunk: scratch is about 3 * dim * QCHUNK doubles per thread. */
#define QCHUNK 64

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(GM_BASELINE_ONLY)
/* AVX2 clone chosen at load time when the CPU has it. Without FMA contraction
 * (-std=c99 implies -ffp-contract=off) it rounds exactly as the default clone. */
#define GM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GM_CLONES
#endif

static double distance2(int dim, const double *x, const double *y) {
    double s = 0.0;
    for (int k = 0; k < dim; k++) { double d = x[k] - y[k]; s += d * d; }
    return s;
}

/* y[r][j] = sum_k a[r][k] dt[k][j] (k ascending, from 0.0) and
 * q[j] = sum_r y[r][j] dt[r][j] (r ascending, from 0.0), for j < m rounded up to a
 * multiple of JT (ld is a multiple of JT; columns past m are scratch).
 * dt, y: dim rows of stride ld. */
#define JT 8
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef double v4d __attribute__((vector_size(32)));
typedef double v4du __attribute__((vector_size(32), aligned(8), may_alias));
static inline v4d load4(const double *p) { return *(const v4du *)p; }
static inline void store4(double *p, v4d x) { *(v4du *)p = x; }
static inline v4d bcast(double x) { v4d v = {x, x, x, x}; return v; }

GM_CLONES
static void quadratic_forms(int dim, int m, int ld, const double *a, const double *dt,
                            double *y, double *q) {
    const v4d zero = {0.0, 0.0, 0.0, 0.0};
    int r = 0;
    for (; r + 4 <= dim; r += 4) {
        const double *a0 = a + (size_t)r * dim, *a1 = a0 + dim, *a2 = a1 + dim, *a3 = a2 + dim;
        for (int j = 0; j < m; j += JT) {
            v4d c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero, c7 = zero;
            for (int k = 0; k < dim; k++) {
                const double *d = dt + (size_t)k * ld + j;
                const v4d lo = load4(d), hi = load4(d + 4);
                const v4d b0 = bcast(a0[k]), b1 = bcast(a1[k]), b2 = bcast(a2[k]), b3 = bcast(a3[k]);
                c0 += b0 * lo; c1 += b0 * hi;
                c2 += b1 * lo; c3 += b1 * hi;
                c4 += b2 * lo; c5 += b2 * hi;
                c6 += b3 * lo; c7 += b3 * hi;
            }
            double *yr = y + (size_t)r * ld + j;
            store4(yr, c0); store4(yr + 4, c1);
            store4(yr + ld, c2); store4(yr + ld + 4, c3);
            store4(yr + 2 * (size_t)ld, c4); store4(yr + 2 * (size_t)ld + 4, c5);
            store4(yr + 3 * (size_t)ld, c6); store4(yr + 3 * (size_t)ld + 4, c7);
        }
    }
    for (; r < dim; r++) {
        const double *a0 = a + (size_t)r * dim;
        for (int j = 0; j < m; j += JT) {
            v4d c0 = zero, c1 = zero;
            for (int k = 0; k < dim; k++) {
                const double *d = dt + (size_t)k * ld + j;
                const v4d b0 = bcast(a0[k]);
                c0 += b0 * load4(d); c1 += b0 * load4(d + 4);
            }
            store4(y + (size_t)r * ld + j, c0);
            store4(y + (size_t)r * ld + j + 4, c1);
        }
    }
    for (int j = 0; j < m; j += JT) {
        v4d q0 = zero, q1 = zero;
        for (int s = 0; s < dim; s++) {
            const double *yr = y + (size_t)s * ld + j, *d = dt + (size_t)s * ld + j;
            q0 += load4(yr) * load4(d);
            q1 += load4(yr + 4) * load4(d + 4);
        }
        store4(q + j, q0);
        store4(q + j + 4, q1);
    }
}
#else
static void quadratic_forms(int dim, int m, int ld, const double *a, const double *dt,
                            double *y, double *q) {
    (void)ld;
    for (int r = 0; r < dim; r++) {
        const double *ar = a + (size_t)r * dim;
        double *yr = y + (size_t)r * ld;
        for (int j = 0; j < m; j++) yr[j] = 0.0;
        for (int k = 0; k < dim; k++) {
            const double *d = dt + (size_t)k * ld;
            for (int j = 0; j < m; j++) yr[j] += ar[k] * d[j];
        }
    }
    for (int j = 0; j < m; j++) q[j] = 0.0;
    for (int s = 0; s < dim; s++)
        for (int j = 0; j < m; j++) q[j] += y[(size_t)s * ld + j] * dt[(size_t)s * ld + j];
}
#endif

/* Scratch of one thread, for chunks of up to ld queries. */
typedef struct {
    int ld;
    double *dt;    /* dim x ld: g - mu of the live queries, transposed */
    double *y;     /* dim x ld: A (g - mu) */
    double *gt;    /* dim x ld: gradient accumulators, transposed, by chunk position */
    double *v;     /* ld: energy accumulators */
    double *q;     /* ld */
    int *live;     /* ld: queries (chunk positions) that survive the block test */
    int *pos;      /* ld: chunk position of each compacted column of dt */
} scratch_t;

static long sum_chunk(int dim, int nq, const double *query, int n_hills,
                      const double *centres, const double *heights,
                      const double *inv_cov, const double *inv_var,
                      const double *min_eig, int n_blocks, const int *order,
                      const int *block_start, const double *block_centre,
                      const double *block_radius, const double *block_min_eig,
                      double q_cut, double *energy, double *gradient, scratch_t *w) {
    const int ld = w->ld;
    const int prune = q_cut > 0.0;
    const int nb = n_blocks > 0 ? n_blocks : 1;
    long evaluated = 0;
    for (int i = 0; i < nq; i++) w->v[i] = 0.0;
    /* gradient accumulators: transposed (dim x ld) for adaptive hills, row-major
     * (nq x dim) for isotropic ones */
    if (gradient)
        for (size_t k = 0; k < (size_t)dim * ld; k++) w->gt[k] = 0.0;
    for (int blk = 0; blk < nb; blk++) {
        const int first = n_blocks > 0 ? block_start[blk] : 0;
        const int last = n_blocks > 0 ? block_start[blk + 1] : n_hills;
        int n_live = 0;
        for (int i = 0; i < nq; i++) {
            if (prune && n_blocks > 0) {
                const double *g = query + (size_t)i * dim;
                double gap = sqrt(distance2(dim, g, block_centre + (size_t)blk * dim)) - block_radius[blk];
                if (gap > 0.0 && block_min_eig[blk] * gap * gap > q_cut) continue;
            }
            w->live[n_live++] = i;
        }
        if (n_live == 0) continue;
        for (int t = first; t < last; t++) {
            const int s = (n_blocks > 0 && order) ? order[t] : t;
            const double *mu = centres + (size_t)s * dim;
            const double h = heights[s];
            if (!inv_cov) {
                /* isotropic: O(dim) per pair, one query at a time */
                const double iv = inv_var[s];
                double *diff = w->dt;
                for (int l = 0; l < n_live; l++) {
                    const int i = w->live[l];
                    const double *g = query + (size_t)i * dim;
                    double d2 = 0.0;
                    for (int k = 0; k < dim; k++) { diff[k] = g[k] - mu[k]; d2 += diff[k] * diff[k]; }
                    if (prune && min_eig && min_eig[s] * d2 > q_cut) continue;
                    evaluated++;
                    const double wt = h * exp(-0.5 * (iv * d2));
                    w->v[i] += wt;
                    if (gradient) {
                        double *gi = w->gt + (size_t)i * dim;
                        for (int k = 0; k < dim; k++) gi[k] -= wt * (iv * diff[k]);
                    }
                }
                continue;
            }
            int m = 0;
            for (int l = 0; l < n_live; l++) {
                const int i = w->live[l];
                const double *g = query + (size_t)i * dim;
                double d2 = 0.0;
                for (int k = 0; k < dim; k++) {
                    const double d = g[k] - mu[k];
                    w->dt[(size_t)k * ld + m] = d;
                    d2 += d * d;
                }
                if (prune && min_eig && min_eig[s] * d2 > q_cut) continue;
                w->pos[m++] = i;
            }
            if (m == 0) continue;
            evaluated += m;
            /* zero the padding columns up to a multiple of JT */
            for (int j = m; j % JT; j++)
                for (int k = 0; k < dim; k++) w->dt[(size_t)k * ld + j] = 0.0;
            quadratic_forms(dim, m, ld, inv_cov + (size_t)s * dim * dim, w->dt, w->y, w->q);
            const double *yv = w->y;
            for (int j = 0; j < m; j++) {
                const double wt = h * exp(-0.5 * w->q[j]);
                w->q[j] = wt;
                w->v[w->pos[j]] += wt;
            }
            if (gradient)
                for (int k = 0; k < dim; k++) {
                    double *gk = w->gt + (size_t)k * ld;
                    const double *yk = yv + (size_t)k * ld;
                    for (int j = 0; j < m; j++) gk[w->pos[j]] -= w->q[j] * yk[j];
                }
        }
    }
    for (int i = 0; i < nq; i++) energy[i] = w->v[i];
    if (gradient && inv_cov)
        for (int i = 0; i < nq; i++)
            for (int k = 0; k < dim; k++) gradient[(size_t)i * dim + k] = w->gt[(size_t)k * ld + i];
    else if (gradient)
        for (size_t k = 0; k < (size_t)nq * dim; k++) gradient[k] = w->gt[k];
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
        scratch_t w = {0, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        const int ld = (chunk + JT - 1) / JT * JT;
        w.ld = ld;
        double *buf = malloc(sizeof(double) * ((size_t)3 * dim * ld + 2 * (size_t)ld));
        int *ibuf = malloc(sizeof(int) * 2 * (size_t)ld);
        if (buf && ibuf) {
            w.dt = buf;
            w.y = w.dt + (size_t)dim * ld;
            w.gt = w.y + (size_t)dim * ld;
            w.v = w.gt + (size_t)dim * ld;
            w.q = w.v + ld;
            w.live = ibuf;
            w.pos = ibuf + ld;
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
                               inv_cov, inv_var, min_eig, n_blocks, order, block_start,
                               block_centre, block_radius, block_min_eig, q_cut,
                               energy + i0, gradient ? gradient + (size_t)i0 * dim : NULL, &w);
        }
        free(buf);
        free(ibuf);
    }
    if (failed) return GM_ENOMEM;
    if (n_evaluated) *n_evaluated = total;
    return GM_OK;
}
