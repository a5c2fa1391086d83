/* Behler atom-centred symmetry functions G2, G4, G5 with analytic derivatives.
 *
 *   fc(R) = 0.5 (cos(pi R / Rc) + 1) for R < Rc, else 0
 *   G2 = sum_j exp(-eta (R_ij - Rs)^2) fc(R_ij)
 *   G4 = 2^(1-zeta) sum_{j<k} (1 + lambda cos)^zeta
 *        exp(-eta (R_ij^2 + R_ik^2 + R_jk^2)) fc(R_ij) fc(R_ik) fc(R_jk)
 *   G5 = as G4 without the R_jk^2 term and without fc(R_jk)
 *
 * j < k runs over neighbour-list entries, so periodic images of one atom are
 * distinct neighbours, as the physical sums require. See gmetad.h.
 *
 * How it is made fast (the angular sum is O(neighbours^2) per centre; timings
 * in benchmarks/README.md):
 *  - per centre, every neighbour's fc, dfc and exp(-eta R^2) are computed once
 *    per unique cutoff / eta, not once per triplet;
 *  - the angular functions of each neighbour-element pair are grouped by
 *    (kind, cutoff, eta): per triplet each unique exp(-eta R_jk^2), fc(R_jk) and
 *    (1 + lambda cos)^zeta is evaluated once and shared by the group members;
 *  - all partners of a neighbour j ("row") are first compacted to the triplets
 *    that can contribute (when there is no G5, R_jk >= every G4 cutoff gives 0:
 *    about half of them), into "slots" (see work_t);
 *  - what depends on a triplet symmetrically (cos, fc(R_jk) and its derivative,
 *    exp(-eta (R_ij^2 + R_ik^2 + R_jk^2))) is computed once, by the row j < k,
 *    and copied into row k's slot;
 *  - G depends on the pair vectors a = R_ij, b = R_ik only through |a|, |b| and
 *    a.b, so dG/da = Ua a + W b with two scalars. With derivatives each row
 *    visits all its partners (each triplet from both ends) and sums its own Ua
 *    and W b, so no other row's accumulator is written and the innermost loops
 *    are pure reductions (values are then halved); without, only k > j;
 *  - everything runs in loops over a row's slots that the compiler vectorises at
 *    plain -O3 (no -ffast-math): exp and cos/sin are inline branch-free
 *    polynomials, selects are bit masks, reductions use "omp simd" or explicit
 *    SIMD vectors.
 * Results equal a direct evaluation up to round-off (about 1e-14 relative).
 * Scratch is malloc'ed once per call and thread, O(max neighbours^2) doubles
 * (0.15 MB for 46 neighbours and the default set); there is no global state. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gmetad.h"
#include "variants.h"

/* Compiled twice: as it is (baseline x86-64), and for AVX2 + FMA through
 * symmetry_avx2.c, which makes the vector loops below 4 wide; dispatch.c picks
 * one at run time. */
#ifndef GM_VARIANT
#define GM_VARIANT base
#endif
#define GM_CAT2(a, b) a##_##b
#define GM_CAT(a, b) GM_CAT2(a, b)

#ifdef _OPENMP
#include <omp.h>
#endif

/* Each row segment of slots is padded to a multiple of LANES (padding contributes
 * exactly zero), so vector loops over it need no scalar remainder. */
#ifndef LANES
#ifdef __AVX__
#define LANES 4
#else
#define LANES 2
#endif
#endif

/* The hottest loop (the per-function sums over a row's partners) is written with
 * explicit vectors, 2 doubles (SSE2, the default x86-64 build) or 4 when the
 * compiler targets AVX: auto-vectorised "omp simd" reductions there were up to
 * 2x slower depending on the loop counter's type and on -fwrapv (which Python's
 * CFLAGS add). Compilers without GNU vector extensions get plain doubles. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__AVX__)
#define VW 4
typedef double vec __attribute__((vector_size(32)));
static inline double vsum(vec v) { return (v[0] + v[1]) + (v[2] + v[3]); }
#elif defined(__GNUC__) || defined(__clang__)
#define VW 2
typedef double vec __attribute__((vector_size(16)));
static inline double vsum(vec v) { return v[0] + v[1]; }
#else
#define VW 1
typedef double vec;
static inline double vsum(vec v) { return v; }
#endif
static inline vec vload(const double *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline vec vzero(void) { vec v = {0}; return v; }
#if LANES % VW != 0
#error "LANES must be a multiple of the vector width VW"
#endif


/* ---- inline math (branch-free, so that loops over it vectorise) ---------- */

/* Selects are done on the bits: under the default -ftrapping-math the compiler
 * will not turn "c ? computed : 0" into a vector blend, and the loop would stay
 * scalar. */
static inline uint64_t bits(double x) { uint64_t b; memcpy(&b, &x, sizeof b); return b; }
static inline double from_bits(uint64_t b) { double x; memcpy(&x, &b, sizeof x); return x; }
/* all ones if the sign bit of d is set (d < 0 or d = -0), else 0 */
static inline uint64_t sign_mask(double d) { return (uint64_t)0 - (bits(d) >> 63); }
/* v where d < 0, else +0 */
static inline double where_negative(double d, double v) { return from_bits(bits(v) & sign_mask(d)); }
/* max(x, 0) */
static inline double positive_part(double x) { return where_negative(-x, x); }
/* max(x, lo) and min(x, hi) */
static inline double at_least(double x, double lo) {
    const uint64_t m = sign_mask(x - lo);
    return from_bits((bits(lo) & m) | (bits(x) & ~m));
}
static inline double at_most(double x, double hi) {
    const uint64_t m = sign_mask(hi - x);
    return from_bits((bits(hi) & m) | (bits(x) & ~m));
}
/* 2^n from t = 1.5 * 2^52 + n (|n| < 1023): n goes into 1.0's exponent field */
static inline double pow2_from_shifted(double t) { return from_bits(bits(1.0) + (bits(t) << 52)); }

/* 2^(j/32), j = 0..31, correctly rounded. */
static const double exp2_32[32] = {
    1.0, 1.0218971486541166, 1.0442737824274138,
    1.0671404006768237, 1.0905077326652577, 1.1143867425958924,
    1.1387886347566916, 1.1637248587775775, 1.189207115002721,
    1.215247359980469, 1.241857812073484, 1.2690509571917332,
    1.2968395546510096, 1.3252366431597413, 1.3542555469368927,
    1.383909881963832, 1.4142135623730951, 1.4451808069770467,
    1.4768261459394993, 1.5091644275934228, 1.5422108254079407,
    1.5759808451078865, 1.6104903319492543, 1.645755478153965,
    1.681792830507429, 1.718619298122478, 1.7562521603732995,
    1.7947090750031072, 1.8340080864093424, 1.8741676341103,
    1.9152065613971474, 1.9571441241754002
};

/* exp(x) without a libm call: x = (32 k + j) ln2/32 + r with |r| <= ln2/64
 * (Cody-Waite), exp(x) = 2^k 2^(j/32) e^r, e^r - 1 by its Taylor polynomial to
 * r^6 (truncation < 4e-18), 2^k applied as two factors so that subnormal
 * results round once, x < -1400 gives 0 and x > 710 gives inf. Checked against
 * libm over [-800, 0]: within 1 ulp, and within one subnormal unit below
 * 2.2e-308. safe = 1 skips the clamps and the split for -708 <= x <= 0. */
static inline double exp_core(double x, int safe) {
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to integer */
    const double xc = safe ? x : at_most(at_least(x, -1400.0), 710.0);
    const double t = xc * (32.0 * 1.4426950408889634) + shifter, n = t - shifter;
    const double r = (xc - n * (6.93147180369123816490e-01 / 32.0)) -
                     n * (1.90821492927058770002e-10 / 32.0);
    const double tab = exp2_32[bits(t) & 31];  /* j = n mod 32: t's low bits hold n */
    const double k = ((n - 15.5) * (1.0 / 32.0) + shifter) - shifter; /* floor(n / 32) */
    double p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r;
    if (safe) /* 2^k is a normal number */
        return (tab + tab * p) * pow2_from_shifted(k + shifter);
    const double t1 = k * 0.5 + shifter, k2 = k - (t1 - shifter);
    return (tab + tab * p) * pow2_from_shifted(t1) * pow2_from_shifted(k2 + shifter);
}
static inline double gm_exp(double x) { return exp_core(x, 0); }
/* the same for -708 <= x <= 0, where the result is normal (a few operations fewer) */
static inline double gm_exp_normal(double x) { return exp_core(x, 1); }

/* Cutoff function from R^2 (no sqrt, no division): with h = pi R / (2 Rc),
 *   fc = 0.5 (cos(2h) + 1) = cos^2 h,
 *   dfc/dR / R = -(pi/Rc) sin h cos h / R = -2 k2 (sin h / h) cos h,  k2 = (pi / (2 Rc))^2,
 * where cos h and sin h / h are Taylor polynomials in h^2 (truncation < 2e-18 on
 * [0, pi/2]). Both are 0 for R >= Rc. */
static inline double cos_h(double h2) { /* cos h = sum (-h2)^n / (2n)! */
    double c = 1.0 / 1124000727777607680000.0;
    c = c * h2 - 1.0 / 2432902008176640000.0;
    c = c * h2 + 1.0 / 6402373705728000.0;
    c = c * h2 - 1.0 / 20922789888000.0;
    c = c * h2 + 1.0 / 87178291200.0;
    c = c * h2 - 1.0 / 479001600.0;
    c = c * h2 + 1.0 / 3628800.0;
    c = c * h2 - 1.0 / 40320.0;
    c = c * h2 + 1.0 / 720.0;
    c = c * h2 - 1.0 / 24.0;
    c = c * h2 + 0.5;
    c = c * h2 - 1.0;
    return -c;
}
static inline double sinc_h(double h2) { /* sin h / h = sum (-h2)^n / (2n+1)! */
    double s = -1.0 / 51090942171709440000.0;
    s = s * h2 + 1.0 / 121645100408832000.0;
    s = s * h2 - 1.0 / 355687428096000.0;
    s = s * h2 + 1.0 / 1307674368000.0;
    s = s * h2 - 1.0 / 6227020800.0;
    s = s * h2 + 1.0 / 39916800.0;
    s = s * h2 - 1.0 / 362880.0;
    s = s * h2 + 1.0 / 5040.0;
    s = s * h2 - 1.0 / 120.0;
    s = s * h2 + 1.0 / 6.0;
    s = s * h2 - 1.0;
    return -s;
}
static inline void cutoff_r2(double r2, double rc2, double k2, double *fc, double *dfc_r) {
    const double h2 = k2 * r2, c = cos_h(h2);
    const double inside = r2 - rc2; /* < 0 inside the cutoff */
    *fc = where_negative(inside, c * c);
    *dfc_r = where_negative(inside, -2.0 * k2 * sinc_h(h2) * c);
}
static inline double cutoff_r2_value(double r2, double rc2, double k2) {
    const double c = cos_h(k2 * r2);
    return where_negative(r2 - rc2, c * c);
}

/* ---- the parameter table, reorganised once per call ------------------------ */

/* Angular functions of one kind, cutoff and eta: per triplet they share
 * exp(-eta ...), the cutoff product and the derivative factors. */
typedef struct {
    int kind;    /* 4 or 5 */
    int ic, ie;  /* index into plan.rc / plan.eta */
    int fc_slot; /* G4: row slot of fc(R_jk) for this cutoff */
    int ec_slot; /* G4: row slot of exp(-eta R_jk^2) */
} group_t;

/* The angular functions of one unordered neighbour-element pair. */
typedef struct {
    int n_members, n_groups, n_pw, n_fc, n_ec;
    int *gstart;      /* group g has members gstart[g] .. gstart[g+1]-1 */
    int *func, *pw;   /* per member: function index (output column), power slot */
    group_t *group;
    double *zeta, *lambda, *pref; /* per power slot; pref = 2^(1-zeta) */
    int *fc_ic, *ec_ie;           /* per row slot: its cutoff / eta index */
    double rmax, rmax4;           /* largest cutoff of all members / of the G4 */
    int has5;
} pair_plan;

typedef struct {
    int n_types;   /* element indices 0 .. n_types-1 occur in the table */
    int n_funcs;
    int n_rc, n_eta;     /* unique cutoffs (all functions), unique angular etas */
    double *rc, *eta;
    /* G2 functions whose neighbour element is t: r_start[t] .. r_start[t+1]-1 */
    int *r_start, *r_func, *r_ic;
    double *r_eta, *r_rs;
    int n_pairs;
    pair_plan *pairs;
    int *pair_of;        /* [t1 * n_types + t2] -> index into pairs, or -1 */
    int max_groups, max_pw, max_fc, max_ec;
    void *block;         /* everything above lives in this one allocation */
} plan_t;

static int find_or_add(double *list, int *n, double v) {
    for (int a = 0; a < *n; a++)
        if (list[a] == v) return a;
    list[*n] = v;
    return (*n)++;
}

/* Bump allocator over one block; sizes are rounded to 8 bytes. */
static void *take(char **cur, size_t bytes) {
    void *p = *cur;
    *cur += (bytes + 7) & ~(size_t)7;
    return p;
}

static int build_plan(int n_funcs, const double *params, plan_t *pl) {
    memset(pl, 0, sizeof *pl);
    int T = 1;
    for (int f = 0; f < n_funcs; f++) {
        const double *q = params + GM_PARAM_COLUMNS * f;
        int e1 = (int)q[1], e2 = (int)q[2];
        if (e1 + 1 > T) T = e1 + 1;
        if ((int)q[0] != 2 && e2 + 1 > T) T = e2 + 1;
    }
    const size_t F = (size_t)(n_funcs > 0 ? n_funcs : 1);
    /* Upper bounds of every array (each pair has at most F members, groups, ...). */
    size_t bytes = 2 * F * sizeof(double) + (T + 1) * sizeof(int) + 2 * F * sizeof(int) +
                   2 * F * sizeof(double) + (size_t)T * T * sizeof(int) + F * sizeof(pair_plan) + 64;
    const size_t max_pairs = (size_t)T * (T + 1) / 2 < F ? (size_t)T * (T + 1) / 2 : F;
    bytes += max_pairs * ((F + 1) * sizeof(int) + 2 * F * sizeof(int) + F * sizeof(group_t) +
                  3 * F * sizeof(double) + 2 * F * sizeof(int) + 128);
    char *cur = malloc(bytes);
    if (!cur) return GM_ENOMEM;
    pl->block = cur;
    pl->n_types = T;
    pl->n_funcs = n_funcs;
    pl->rc = take(&cur, F * sizeof(double));
    pl->eta = take(&cur, F * sizeof(double));
    for (int f = 0; f < n_funcs; f++) find_or_add(pl->rc, &pl->n_rc, params[GM_PARAM_COLUMNS * f + 3]);

    /* G2, bucketed by neighbour element. */
    pl->r_start = take(&cur, (T + 1) * sizeof(int));
    pl->r_func = take(&cur, F * sizeof(int));
    pl->r_ic = take(&cur, F * sizeof(int));
    pl->r_eta = take(&cur, F * sizeof(double));
    pl->r_rs = take(&cur, F * sizeof(double));
    int nr = 0;
    for (int t = 0; t < T; t++) {
        pl->r_start[t] = nr;
        for (int f = 0; f < n_funcs; f++) {
            const double *q = params + GM_PARAM_COLUMNS * f;
            if ((int)q[0] != 2 || (int)q[1] != t) continue;
            pl->r_func[nr] = f;
            pl->r_ic[nr] = find_or_add(pl->rc, &pl->n_rc, q[3]);
            pl->r_eta[nr] = q[4];
            pl->r_rs[nr] = q[5];
            nr++;
        }
    }
    pl->r_start[T] = nr;

    /* Angular functions, by unordered element pair, then by (kind, cutoff, eta). */
    pl->pair_of = take(&cur, (size_t)T * T * sizeof(int));
    pl->pairs = take(&cur, F * sizeof(pair_plan));
    for (int a = 0; a < T * T; a++) pl->pair_of[a] = -1;
    for (int f = 0; f < n_funcs; f++) {
        const double *q = params + GM_PARAM_COLUMNS * f;
        if ((int)q[0] == 2) continue;
        int e1 = (int)q[1], e2 = (int)q[2];
        if (e1 < 0 || e2 < 0) continue; /* matches no neighbour */
        if (pl->pair_of[e1 * T + e2] >= 0) continue;
        pair_plan *pp = &pl->pairs[pl->n_pairs];
        memset(pp, 0, sizeof *pp);
        pl->pair_of[e1 * T + e2] = pl->pair_of[e2 * T + e1] = pl->n_pairs++;
        pp->gstart = take(&cur, (F + 1) * sizeof(int));
        pp->func = take(&cur, F * sizeof(int));
        pp->pw = take(&cur, F * sizeof(int));
        pp->group = take(&cur, F * sizeof(group_t));
        pp->zeta = take(&cur, F * sizeof(double));
        pp->lambda = take(&cur, F * sizeof(double));
        pp->pref = take(&cur, F * sizeof(double));
        pp->fc_ic = take(&cur, F * sizeof(int));
        pp->ec_ie = take(&cur, F * sizeof(int));
        /* Groups in order of first appearance; members of a group in table order. */
        for (int g0 = 0; g0 < n_funcs; g0++) {
            const double *q0 = params + GM_PARAM_COLUMNS * g0;
            int k0 = (int)q0[0], a0 = (int)q0[1], b0 = (int)q0[2];
            if (k0 == 2 || !((a0 == e1 && b0 == e2) || (a0 == e2 && b0 == e1))) continue;
            int seen = 0; /* is (kind, rc, eta) of g0 already a group? */
            for (int h = 0; h < g0 && !seen; h++) {
                const double *qh = params + GM_PARAM_COLUMNS * h;
                int kh = (int)qh[0], ah = (int)qh[1], bh = (int)qh[2];
                seen = kh == k0 && ((ah == e1 && bh == e2) || (ah == e2 && bh == e1)) &&
                       qh[3] == q0[3] && qh[4] == q0[4];
            }
            if (seen) continue;
            group_t *g = &pp->group[pp->n_groups];
            g->kind = k0;
            g->ic = find_or_add(pl->rc, &pl->n_rc, q0[3]);
            g->ie = find_or_add(pl->eta, &pl->n_eta, q0[4]);
            g->fc_slot = g->ec_slot = -1;
            if (k0 == 4) {
                for (int s = 0; s < pp->n_fc && g->fc_slot < 0; s++)
                    if (pp->fc_ic[s] == g->ic) g->fc_slot = s;
                if (g->fc_slot < 0) { g->fc_slot = pp->n_fc; pp->fc_ic[pp->n_fc++] = g->ic; }
                for (int s = 0; s < pp->n_ec && g->ec_slot < 0; s++)
                    if (pp->ec_ie[s] == g->ie) g->ec_slot = s;
                if (g->ec_slot < 0) { g->ec_slot = pp->n_ec; pp->ec_ie[pp->n_ec++] = g->ie; }
                if (q0[3] > pp->rmax4) pp->rmax4 = q0[3];
            } else {
                pp->has5 = 1;
            }
            if (q0[3] > pp->rmax) pp->rmax = q0[3];
            pp->gstart[pp->n_groups++] = pp->n_members;
            for (int f2 = g0; f2 < n_funcs; f2++) {
                const double *q2 = params + GM_PARAM_COLUMNS * f2;
                int k2 = (int)q2[0], a2 = (int)q2[1], b2 = (int)q2[2];
                if (k2 != k0 || !((a2 == e1 && b2 == e2) || (a2 == e2 && b2 == e1)) ||
                    q2[3] != q0[3] || q2[4] != q0[4])
                    continue;
                int u = 0;
                while (u < pp->n_pw && !(pp->zeta[u] == q2[5] && pp->lambda[u] == q2[6])) u++;
                if (u == pp->n_pw) {
                    pp->zeta[u] = q2[5];
                    pp->lambda[u] = q2[6];
                    pp->pref[u] = pow(2.0, 1.0 - q2[5]);
                    pp->n_pw++;
                }
                pp->func[pp->n_members] = f2;
                pp->pw[pp->n_members++] = u;
            }
        }
        pp->gstart[pp->n_groups] = pp->n_members;
        if (pp->n_groups > pl->max_groups) pl->max_groups = pp->n_groups;
        if (pp->n_pw > pl->max_pw) pl->max_pw = pp->n_pw;
        if (pp->n_fc > pl->max_fc) pl->max_fc = pp->n_fc;
        if (pp->n_ec > pl->max_ec) pl->max_ec = pp->n_ec;
    }
    return GM_OK;
}

/* ---- per-thread scratch ---------------------------------------------------- */

typedef struct {
    int cap;     /* max neighbours of a centre, padded to LANES */
    double max_r2; /* largest R^2 of the centre's neighbours */
    /* the centre's neighbours, sorted by element (bucket n_types: no function) */
    int *order, *type, *tstart;
    double *x, *y, *z, *r, *ir;
    double *fc, *dfc, *dfcr, *ea; /* [n_rc][cap] fc, dfc, dfc/r; [n_eta][cap] exp(-eta r^2) */
    /* Slots: every row j's partners k, compacted, one segment per (j, element of
     * k) padded to LANES, with what depends on the triplet symmetrically: cos,
     * fc(R_jk), dfc(R_jk)/R_jk per G4 cutoff, exp(-eta (R_ij^2 + R_ik^2 + R_jk^2))
     * per G4 eta. */
    long slot_cap;
    int *part;                          /* [slot] partner k, -1 for padding */
    /* [j * n_types + t]: first slot, number of partners, of which k < j, next k < j slot to fill */
    int *seg_s0, *seg_na, *seg_lo, *fill;
    double *s_cos, *s_fc, *s_dfc, *s_ec;  /* [slot], [max_fc][slot], [max_fc][slot], [max_ec][slot] */
    /* one row segment: gathered partner data and per-triplet factors */
    double *bx, *by, *bz, *irb, *tmp, *fb, *eb, *pw_p, *pw_q, *grp;
    double *fcut, *geo; /* [max_fc][3][cap] Fp, Gk, Hk; [2][cap] ca, cw */
    /* derivatives: G2 coefficients [radial function][cap]; one row's block [n_funcs][3] */
    double *rcoef, *rowbuf;
    void *block;
} work_t;

static int work_alloc(work_t *w, const plan_t *pl, long max_np) {
    const size_t cap = (size_t)((max_np + LANES - 1) / LANES + 1) * LANES, T = pl->n_types;
    const size_t nrc = pl->n_rc, neta = pl->n_eta > 0 ? pl->n_eta : 1;
    const size_t slots = cap * (cap + T * LANES);
    const size_t F = pl->n_funcs > 0 ? pl->n_funcs : 1;
    const size_t n_dbl = cap * (5 + 3 * nrc + neta + 5 + 2 * nrc + neta + 2 * pl->max_pw +
                                5 * pl->max_groups + F + 3 * pl->max_fc + 2) +
                         slots * (1 + 2 * pl->max_fc + pl->max_ec) + 3 * F;
    const size_t n_int = 2 * cap + T + 2 + slots + 4 * cap * T;
    char *cur = malloc(n_dbl * sizeof(double) + n_int * sizeof(int) + 64 * sizeof(double));
    if (!cur) return GM_ENOMEM;
    w->block = cur;
    w->cap = (int)cap;
    w->slot_cap = (long)slots;
    double **d[] = {&w->x, &w->y, &w->z, &w->r, &w->ir, &w->bx, &w->by, &w->bz, &w->irb, &w->tmp};
    for (size_t a = 0; a < sizeof d / sizeof *d; a++) *d[a] = take(&cur, cap * sizeof(double));
    w->fc = take(&cur, nrc * cap * sizeof(double));
    w->dfc = take(&cur, nrc * cap * sizeof(double));
    w->dfcr = take(&cur, nrc * cap * sizeof(double));
    w->ea = take(&cur, neta * cap * sizeof(double));
    w->fb = take(&cur, nrc * cap * sizeof(double));
    w->eb = take(&cur, neta * cap * sizeof(double));
    w->pw_p = take(&cur, pl->max_pw * cap * sizeof(double));
    w->pw_q = take(&cur, pl->max_pw * cap * sizeof(double));
    w->grp = take(&cur, 5 * pl->max_groups * cap * sizeof(double));
    w->rcoef = take(&cur, F * cap * sizeof(double));
    w->fcut = take(&cur, 3 * pl->max_fc * cap * sizeof(double));
    w->geo = take(&cur, 2 * cap * sizeof(double));
    w->rowbuf = take(&cur, 3 * F * sizeof(double));
    w->s_cos = take(&cur, slots * sizeof(double));
    w->s_fc = take(&cur, pl->max_fc * slots * sizeof(double));
    w->s_dfc = take(&cur, pl->max_fc * slots * sizeof(double));
    w->s_ec = take(&cur, pl->max_ec * slots * sizeof(double));
    w->order = take(&cur, cap * sizeof(int));
    w->type = take(&cur, cap * sizeof(int));
    w->tstart = take(&cur, (T + 2) * sizeof(int));
    w->part = take(&cur, slots * sizeof(int));
    w->seg_s0 = take(&cur, cap * T * sizeof(int));
    w->seg_na = take(&cur, cap * T * sizeof(int));
    w->seg_lo = take(&cur, cap * T * sizeof(int));
    w->fill = take(&cur, cap * T * sizeof(int));
    return GM_OK;
}

/* ---- one centre -------------------------------------------------------------- */

/* Neighbours of centre i into the scratch, sorted by element; per-neighbour
 * cutoff functions and exponentials. Returns the number of neighbours. */
static int load_neighbours(int i, const int *types, const long *pair_offset, const int *neighbour,
                           const double *vectors, const plan_t *pl, work_t *w) {
    const long p0 = pair_offset[i];
    const int np = (int)(pair_offset[i + 1] - p0), T = pl->n_types, cap = w->cap;
    int *ts = w->tstart;
    for (int t = 0; t <= T + 1; t++) ts[t] = 0;
    for (int q = 0; q < np; q++) {
        int t = types[neighbour[p0 + q]];
        if (t < 0 || t >= T) t = T;
        ts[t + 1]++;
    }
    for (int t = 0; t <= T; t++) ts[t + 1] += ts[t];
    for (int q = 0; q < np; q++) { /* counting sort, stable */
        int t = types[neighbour[p0 + q]];
        if (t < 0 || t >= T) t = T;
        const int s = ts[t]++;
        const double *v = vectors + 3 * (p0 + q);
        w->order[s] = q;
        w->type[s] = t;
        w->x[s] = v[0];
        w->y[s] = v[1];
        w->z[s] = v[2];
    }
    for (int t = T; t > 0; t--) ts[t] = ts[t - 1];
    ts[0] = 0;
    double *r2 = w->tmp;
    w->max_r2 = 0.0;
    for (int q = 0; q < np; q++) {
        r2[q] = w->x[q] * w->x[q] + w->y[q] * w->y[q] + w->z[q] * w->z[q];
        w->r[q] = sqrt(r2[q]);
        w->ir[q] = 1.0 / w->r[q];
        if (r2[q] > w->max_r2) w->max_r2 = r2[q];
    }
    for (int c = 0; c < pl->n_rc; c++) {
        const double rc = pl->rc[c], k2 = (0.5 * M_PI / rc) * (0.5 * M_PI / rc);
        double *fc = w->fc + c * cap, *dfc = w->dfc + c * cap, *dfcr = w->dfcr + c * cap;
        for (int q = 0; q < np; q++) {
            double f, dfr;
            cutoff_r2(r2[q], rc * rc, k2, &f, &dfr);
            fc[q] = f;
            dfcr[q] = dfr;
            dfc[q] = dfr * w->r[q];
        }
    }
    for (int e = 0; e < pl->n_eta; e++) {
        const double eta = pl->eta[e];
        double *ea = w->ea + e * cap;
        const int safe = eta >= 0.0 && eta * w->max_r2 <= 700.0; /* normal results */
        if (safe)
            for (int q = 0; q < np; q++) ea[q] = gm_exp_normal(-eta * r2[q]);
        else
            for (int q = 0; q < np; q++) ea[q] = gm_exp(-eta * r2[q]);
    }
    return np;
}

/* G2 values; with derivatives, the coefficients c (dG/dR_q = c R_q, one pair
 * only) go to rcoef[a][q] for radial function a. */
static void radial(const plan_t *pl, work_t *w, double *g, int deriv) {
    const int cap = w->cap;
    double *restrict val = w->bx; /* row scratch, free here */
    for (int t = 0; t < pl->n_types; t++) {
        const int q0 = w->tstart[t], nq = w->tstart[t + 1] - q0;
        if (nq == 0) continue;
        const double *restrict r = w->r + q0, *restrict ir = w->ir + q0;
        for (int a = pl->r_start[t]; a < pl->r_start[t + 1]; a++) {
            const int f = pl->r_func[a];
            const double eta = pl->r_eta[a], rs = pl->r_rs[a], rmax = sqrt(w->max_r2) + fabs(rs);
            const int safe = eta >= 0.0 && eta * rmax * rmax <= 700.0;
            const double *restrict fc = w->fc + pl->r_ic[a] * cap + q0;
            const double *restrict dfc = w->dfc + pl->r_ic[a] * cap + q0;
            double *restrict coef = w->rcoef + (size_t)a * cap + q0;
            if (safe)
                for (int q = 0; q < nq; q++) val[q] = gm_exp_normal(-eta * (r[q] - rs) * (r[q] - rs));
            else
                for (int q = 0; q < nq; q++) val[q] = gm_exp(-eta * (r[q] - rs) * (r[q] - rs));
            if (deriv)
                for (int q = 0; q < nq; q++) { /* val: exp -> exp fc */
                    const double e = val[q];
                    val[q] = e * fc[q];
                    coef[q] = (e * dfc[q] - 2.0 * eta * (r[q] - rs) * val[q]) * ir[q];
                }
            else
                for (int q = 0; q < nq; q++) val[q] *= fc[q];
            double v = 0.0;
#pragma omp simd reduction(+ : v)
            for (int q = 0; q < nq; q++) v += val[q];
            g[f] += v;
        }
    }
}

/* Compact every row's partners into slots (see work_t): the triplets that can
 * contribute, i.e. both pairs within the pair plan's largest cutoff and R_jk
 * below some G4 cutoff unless there are G5. With derivatives a row gets all
 * partners k != j, else only k > j. Padding slots have part = -1. */
static void build_slots(int np, int deriv, const plan_t *pl, work_t *w) {
    const int T = pl->n_types;
    double *d2 = w->tmp;
    int s = 0;
    for (int j = 0; j < np; j++) {
        const int tj = w->type[j];
        const double ax = w->x[j], ay = w->y[j], az = w->z[j];
        for (int tk = 0; tk < T; tk++) {
            const int seg = j * T + tk;
            w->seg_s0[seg] = w->fill[seg] = s;
            w->seg_na[seg] = w->seg_lo[seg] = 0;
            const int p = tj < T ? pl->pair_of[tj * T + tk] : -1;
            if (p < 0) continue;
            const pair_plan *pp = &pl->pairs[p];
            if (!(w->r[j] < pp->rmax)) continue;
            int k0 = w->tstart[tk];
            const int k1 = w->tstart[tk + 1];
            if (!deriv && k0 <= j) k0 = j + 1;
            if (k0 >= k1) continue;
            const double rmax = pp->rmax, cut4 = pp->rmax4 * pp->rmax4;
            const double *restrict xk = w->x + k0, *restrict yk = w->y + k0, *restrict zk = w->z + k0;
            for (int n = 0; n < k1 - k0; n++) {
                const double dx = xk[n] - ax, dy = yk[n] - ay, dz = zk[n] - az;
                d2[n] = dx * dx + dy * dy + dz * dz;
            }
            /* partners before j, then after it (j itself is skipped) */
            const int m = k1 - k0, jj = j - k0, mid = jj < 0 ? 0 : (jj > m ? m : jj);
            const int has5 = pp->has5;
            const double *restrict rk = w->r + k0;
            int *restrict part = w->part + s;
            int na = 0;
            for (int n = 0; n < mid; n++) {
                part[na] = k0 + n;
                na += (rk[n] < rmax) & (has5 | (d2[n] < cut4));
            }
            const int lo = na;
            for (int n = jj >= 0 && jj < m ? jj + 1 : mid; n < m; n++) {
                part[na] = k0 + n;
                na += (rk[n] < rmax) & (has5 | (d2[n] < cut4));
            }
            const int nap = (na + LANES - 1) / LANES * LANES;
            for (int n = na; n < nap; n++) { /* padding: zero triplet factors */
                part[n] = -1;
                w->s_cos[s + n] = 0.0;
                for (int t = 0; t < pp->n_fc; t++)
                    w->s_fc[t * w->slot_cap + s + n] = w->s_dfc[t * w->slot_cap + s + n] = 0.0;
                for (int t = 0; t < pp->n_ec; t++) w->s_ec[t * w->slot_cap + s + n] = 0.0;
            }
            w->seg_na[seg] = na;
            w->seg_lo[seg] = lo;
            s += nap;
        }
    }
}

/* Angular functions of row j (pair vector a = R_ij) with the partners k (b = R_ik)
 * of one segment (pair plan pp). First the triplets with k > j: their symmetric
 * factors are computed into this row's slots and, with derivatives, copied to
 * the slots of row k (rows run in increasing j, so the k < j ones are ready).
 * Then the per-row sums: values and, with derivatives, this row's share of its
 * block dG/da = sum_k [Ua a + W b], added to rowbuf. */
static void row_segment(int j, int seg, const pair_plan *pp, const plan_t *pl, work_t *w,
                        double *g, double *rowbuf) {
    const int cap = w->cap, T = pl->n_types, deriv = rowbuf != NULL;
    const long sc = w->slot_cap, s0 = w->seg_s0[seg];
    const int na = w->seg_na[seg], lo = w->seg_lo[seg];
    const int nap = (na + LANES - 1) / LANES * LANES;
    const int *part = w->part + s0;
    const double ax = w->x[j], ay = w->y[j], az = w->z[j], ira = w->ir[j];

    /* Gather the partners; padding gets b = 0 and fb = eb = 0, hence zero terms.
     * (restrict: the scratch arrays never overlap; spares runtime alias checks) */
    const int nrc = pl->n_rc, neta = pl->n_eta;
    double *restrict bx = w->bx, *restrict by = w->by, *restrict bz = w->bz, *restrict irb = w->irb;
    for (int n = 0; n < na; n++) {
        const int k = part[n];
        bx[n] = w->x[k];
        by[n] = w->y[k];
        bz[n] = w->z[k];
        irb[n] = w->ir[k];
    }
    for (int c = 0; c < nrc; c++) {
        const double *restrict fc = w->fc + (size_t)c * cap;
        double *restrict fb = w->fb + (size_t)c * cap;
        for (int n = 0; n < na; n++) fb[n] = fc[part[n]];
        for (int n = na; n < nap; n++) fb[n] = 0.0;
    }
    for (int e = 0; e < neta && pp->has5; e++) { /* G5: exp(-eta R_ik^2) */
        const double *restrict ea = w->ea + (size_t)e * cap;
        double *restrict eb = w->eb + (size_t)e * cap;
        for (int n = 0; n < na; n++) eb[n] = ea[part[n]];
        for (int n = na; n < nap; n++) eb[n] = 0.0;
    }
    for (int n = na; n < nap; n++) bx[n] = by[n] = bz[n] = irb[n] = 0.0;

    /* Symmetric factors of the triplets with k > j. cos is rounded as a direct
     * evaluation would, a.b (1 / (|a| |b|)): functions with zeta < 1 have a
     * derivative singular at cos = +-1 that amplifies any difference. */
    double *restrict cs = w->s_cos + s0, *restrict rjk2 = w->tmp, *restrict rb = w->geo;
    const double ra = w->r[j];
    for (int n = lo; n < na; n++) rb[n] = w->r[part[n]];
    for (int n = lo; n < na; n++) {
        const double cx = bx[n] - ax, cy = by[n] - ay, cz = bz[n] - az;
        cs[n] = (ax * bx[n] + ay * by[n] + az * bz[n]) * (1.0 / (ra * rb[n]));
        rjk2[n] = cx * cx + cy * cy + cz * cz;
    }
    for (int t = 0; t < pp->n_fc; t++) {
        const double rc = pl->rc[pp->fc_ic[t]], k2 = (0.5 * M_PI / rc) * (0.5 * M_PI / rc);
        double *restrict fcjk = w->s_fc + t * sc + s0, *restrict dfcjk = w->s_dfc + t * sc + s0;
        if (!deriv)
            for (int n = lo; n < na; n++) fcjk[n] = cutoff_r2_value(rjk2[n], rc * rc, k2);
        else
            for (int n = lo; n < na; n++) {
                double f, dfr;
                cutoff_r2(rjk2[n], rc * rc, k2, &f, &dfr);
                fcjk[n] = f;
                dfcjk[n] = dfr;
            }
    }
    for (int t = 0; t < pp->n_ec; t++) { /* E = exp(-eta (R_ij^2 + R_ik^2 + R_jk^2)) */
        const double eta = pl->eta[pp->ec_ie[t]];
        const double *restrict ea = w->ea + (size_t)pp->ec_ie[t] * cap, eaj = ea[j];
        const int safe = eta >= 0.0 && eta * 4.0 * w->max_r2 <= 700.0; /* R_jk <= 2 max R */
        double *restrict ec = w->s_ec + t * sc + s0;
        double *restrict eb = w->eb + (size_t)pp->ec_ie[t] * cap;
        if (!pp->has5) /* else gathered above */
            for (int n = lo; n < na; n++) eb[n] = ea[part[n]];
        if (safe)
            for (int n = lo; n < na; n++) ec[n] = eaj * eb[n] * gm_exp_normal(-eta * rjk2[n]);
        else
            for (int n = lo; n < na; n++) ec[n] = eaj * eb[n] * gm_exp(-eta * rjk2[n]);
    }
    if (deriv) { /* the same triplets, seen from row k */
        const int tj = w->type[j];
        for (int n = lo; n < na; n++) {
            const long m = w->fill[(size_t)part[n] * T + tj]++;
            w->s_cos[m] = cs[n];
            for (int t = 0; t < pp->n_fc; t++) {
                w->s_fc[t * sc + m] = w->s_fc[t * sc + s0 + n];
                w->s_dfc[t * sc + m] = w->s_dfc[t * sc + s0 + n];
            }
            for (int t = 0; t < pp->n_ec; t++) w->s_ec[t * sc + m] = w->s_ec[t * sc + s0 + n];
        }
    }

    /* P = 2^(1-zeta) (1 + lambda cos)^zeta and Q = 2^(1-zeta) lambda zeta (1 + lambda cos)^(zeta-1)
     * per (zeta, lambda); the base is clamped at 0 (it is >= 0 up to round-off).
     * Integer zeta: base^(zeta-1) by repeated squaring, small exponents spelled out. */
    for (int u = 0; u < pp->n_pw; u++) {
        const double zeta = pp->zeta[u], lambda = pp->lambda[u], pref = pp->pref[u];
        const double qf = pref * lambda * zeta;
        double *restrict P = w->pw_p + u * cap, *restrict Q = w->pw_q + u * cap;
        const int iz = (int)zeta;
        if ((double)iz != zeta || iz < 1 || iz > 64) {
            for (int n = 0; n < nap; n++) {
                const double base = 1.0 + lambda * cs[n];
                const double p = base > 0.0 ? pow(base, zeta) : 0.0;
                P[n] = pref * p;
                Q[n] = base > 0.0 ? qf * (p / base) : 0.0;
            }
            continue;
        }
#define POWERS(R) /* R: base^(zeta-1) from b */                           \
    if (!deriv)                                                           \
        for (int n = 0; n < nap; n++) {                                   \
            const double b = positive_part(1.0 + lambda * cs[n]), r = (R); \
            P[n] = pref * (r * b);                                        \
        }                                                                 \
    else                                                                  \
        for (int n = 0; n < nap; n++) {                                   \
            const double b = positive_part(1.0 + lambda * cs[n]), r = (R); \
            P[n] = pref * (r * b);                                        \
            Q[n] = qf * r;                                                \
        }
        switch (iz) {
        case 1: POWERS(1.0) break;
        case 2: POWERS(b) break;
        case 3: POWERS(b * b) break;
        case 4: POWERS(b * (b * b)) break;
        default:
            for (int n = 0; n < nap; n++) {
                double r = 1.0, sq = positive_part(1.0 + lambda * cs[n]);
                for (int e = iz - 1; e; e >>= 1) {
                    if (e & 1) r *= sq;
                    sq *= sq;
                }
                P[n] = pref * (r * positive_part(1.0 + lambda * cs[n]));
                Q[n] = qf * r;
            }
        }
#undef POWERS
    }

    /* What the G4 groups of one cutoff share: Fp = fa fb fc_jk and, for the
     * derivatives, Hk = fa fb dfc_jk/R_jk and Gk = (dfa/|a|) fb fc_jk + Hk; and the
     * angular factor's geometry ca = cos/|a|^2, cw = 1/(|a||b|). */
    for (int t = 0; t < pp->n_fc; t++) {
        const int ic = pp->fc_ic[t];
        const double fa = w->fc[ic * cap + j], dfar = w->dfcr[ic * cap + j];
        const double *restrict fb = w->fb + ic * cap;
        const double *restrict fcjk = w->s_fc + t * sc + s0, *restrict dfcjk = w->s_dfc + t * sc + s0;
        double *restrict Fp = w->fcut + 3 * t * cap, *restrict Gk = Fp + cap, *restrict Hk = Fp + 2 * cap;
        if (!deriv)
            for (int n = 0; n < nap; n++) Fp[n] = fa * fb[n] * fcjk[n];
        else
            for (int n = 0; n < nap; n++) {
                const double f2 = fa * fb[n], h = f2 * dfcjk[n];
                Fp[n] = f2 * fcjk[n];
                Hk[n] = h;
                Gk[n] = dfar * fb[n] * fcjk[n] + h;
            }
    }
    double *restrict ca = w->geo, *restrict cw = w->geo + cap;
    if (deriv) {
        const double ira2 = ira * ira;
        for (int n = 0; n < nap; n++) {
            ca[n] = cs[n] * ira2;
            cw[n] = ira * irb[n];
        }
    }

    /* Per group: A = E Fp (the term without the angular factor) and, for the
     * derivatives, Ka = (1/|a|) dA/d|a| and Kw = dA/d(a.b) at fixed cos, and
     * A cos/|a|^2, A/(|a||b|) (the angular factor's share):
     *   term = P A;  dterm/da = (P Ka - Q A cos/|a|^2) a + (P Kw + Q A/(|a||b|)) b. */
    for (int gi = 0; gi < pp->n_groups; gi++) {
        const group_t *gr = &pp->group[gi];
        const double eta = pl->eta[gr->ie];
        double *restrict A = w->grp + (5 * gi) * cap, *restrict Ka = A + cap, *restrict Kw = A + 2 * cap;
        double *restrict Aca = A + 3 * cap, *restrict Acw = A + 4 * cap;
        if (gr->kind == 4) {
            const double *restrict Fp = w->fcut + 3 * gr->fc_slot * cap;
            const double *restrict Gk = Fp + cap, *restrict Hk = Fp + 2 * cap;
            const double *restrict E = w->s_ec + gr->ec_slot * sc + s0;
            if (!deriv)
                for (int n = 0; n < nap; n++) A[n] = E[n] * Fp[n];
            else
                for (int n = 0; n < nap; n++) {
                    const double e = E[n], an = e * Fp[n];
                    A[n] = an;
                    Ka[n] = e * (-4.0 * eta * Fp[n] + Gk[n]);
                    Kw[n] = e * (2.0 * eta * Fp[n] - Hk[n]);
                    Aca[n] = an * ca[n];
                    Acw[n] = an * cw[n];
                }
        } else { /* G5: E = exp(-eta (R_ij^2 + R_ik^2)), no fc(R_jk) */
            const double ea = w->ea[gr->ie * cap + j];
            const double fa = w->fc[gr->ic * cap + j], dfar = w->dfcr[gr->ic * cap + j];
            const double *restrict fb = w->fb + gr->ic * cap, *restrict eb = w->eb + gr->ie * cap;
            if (!deriv)
                for (int n = 0; n < nap; n++) A[n] = (ea * eb[n]) * (fa * fb[n]);
            else
                for (int n = 0; n < nap; n++) {
                    const double f2 = fa * fb[n], e = ea * eb[n], an = e * f2;
                    A[n] = an;
                    Ka[n] = e * (-2.0 * eta * f2 + dfar * fb[n]);
                    Kw[n] = 0.0;
                    Aca[n] = an * ca[n];
                    Acw[n] = an * cw[n];
                }
        }
    }

    /* Members: reductions over the partners. Values: sum P A; derivatives of
     * this row: Ua = sum (P Ka - Q A cos/|a|^2), Wb = sum (P Kw + Q A/(|a||b|)) b. */
    const double half = deriv ? 0.5 : 1.0; /* ordered pairs count each triplet twice */
    for (int gi = 0; gi < pp->n_groups; gi++) {
        const double *restrict A = w->grp + (5 * gi) * cap, *restrict Ka = A + cap;
        const double *restrict Kw = A + 2 * cap, *restrict Aca = A + 3 * cap, *restrict Acw = A + 4 * cap;
        for (int m = pp->gstart[gi]; m < pp->gstart[gi + 1]; m++) {
            const int f = pp->func[m];
            const double *restrict P = w->pw_p + pp->pw[m] * cap, *restrict Q = w->pw_q + pp->pw[m] * cap;
            vec vv = vzero(), va = vzero(), vx = vzero(), vy = vzero(), vz = vzero();
            if (!deriv) {
                for (int n = 0; n < nap; n += VW) vv += vload(P + n) * vload(A + n);
                g[f] += vsum(vv);
                continue;
            }
            for (int n = 0; n < nap; n += VW) {
                const vec p = vload(P + n), q = vload(Q + n);
                const vec wb = p * vload(Kw + n) + q * vload(Acw + n);
                vv += p * vload(A + n);
                va += p * vload(Ka + n) - q * vload(Aca + n);
                vx += wb * vload(bx + n);
                vy += wb * vload(by + n);
                vz += wb * vload(bz + n);
            }
            const double v = vsum(vv), ua = vsum(va), dx = vsum(vx), dy = vsum(vy), dz = vsum(vz);
            g[f] += half * v;
            double *d = rowbuf + (size_t)f * 3;
            d[0] += ua * ax + dx;
            d[1] += ua * ay + dy;
            d[2] += ua * az + dz;
        }
    }
}

static void one_centre(int i, const int *types, const long *pair_offset, const int *neighbour,
                       const double *vectors, const plan_t *pl, work_t *w, double *g, double *dg) {
    const int F = pl->n_funcs, T = pl->n_types;
    const int np = load_neighbours(i, types, pair_offset, neighbour, vectors, pl, w);
    for (int f = 0; f < F; f++) g[f] = 0.0;
    radial(pl, w, g, dg != NULL);
    if (pl->n_pairs > 0) build_slots(np, dg != NULL, pl, w);
    /* Rows in increasing j (row_segment relies on it). With derivatives each row's
     * block is summed in rowbuf and written once, so the (large) output is only
     * ever stored to. */
    double *rowbuf = dg ? w->rowbuf : NULL;
    for (int j = 0; j < np; j++) {
        const int tj = w->type[j];
        if (dg) {
            memset(rowbuf, 0, sizeof(double) * 3 * (size_t)F);
            if (tj < T)
                for (int a = pl->r_start[tj]; a < pl->r_start[tj + 1]; a++) {
                    const double c = w->rcoef[(size_t)a * w->cap + j];
                    double *d = rowbuf + 3 * (size_t)pl->r_func[a];
                    d[0] = c * w->x[j];
                    d[1] = c * w->y[j];
                    d[2] = c * w->z[j];
                }
        }
        if (pl->n_pairs > 0 && tj < T)
            for (int tk = 0; tk < T; tk++) {
                const int seg = j * T + tk;
                if (w->seg_na[seg] > 0)
                    row_segment(j, seg, &pl->pairs[pl->pair_of[tj * T + tk]], pl, w, g, rowbuf);
            }
        if (dg) memcpy(dg + (size_t)w->order[j] * F * 3, rowbuf, sizeof(double) * 3 * (size_t)F);
    }
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

int GM_CAT(gm_symmetry_functions, GM_VARIANT)(GM_SYMMETRY_ARGS) {
    if (n_centres < 0 || n_funcs < 0) return GM_EINVAL;
    int status = check_params(n_funcs, params);
    if (status != GM_OK) return status;
    if (derivatives && !deriv_start) return GM_EINVAL;
    if (n_centres == 0) return GM_OK;
    plan_t plan;
    status = build_plan(n_funcs, params, &plan);
    if (status != GM_OK) return status;
    long max_np = 0;
    for (int c = 0; c < n_centres; c++) {
        const long np = pair_offset[centres[c] + 1] - pair_offset[centres[c]];
        if (np > max_np) max_np = np;
    }
    /* a few centres (one adsorbate) cost less than waking threads */
#pragma omp parallel if (n_centres >= 8)
    {
        work_t w;
        const int ok = work_alloc(&w, &plan, max_np) == GM_OK;
        if (!ok) {
#pragma omp atomic write
            status = GM_ENOMEM;
        }
#pragma omp for schedule(dynamic, 4)
        for (int c = 0; c < n_centres; c++) {
            if (!ok) continue; /* every thread must reach the loop; the call fails */
            double *dg = derivatives ? derivatives + deriv_start[c] * n_funcs * 3 : NULL;
            one_centre(centres[c], types, pair_offset, neighbour, vectors, &plan, &w,
                       values + (size_t)c * n_funcs, dg);
        }
        if (ok) free(w.block);
    }
    free(plan.block);
    return status;
}
