/*
 * gmetad.h - the whole surface of the G-metaD C kernels.
 *
 * Conventions (all functions):
 *   - float64 everywhere; lengths in angstrom, energies in eV (the kernels are
 *     unit-agnostic, the Python layer feeds them angstrom/eV);
 *   - arrays are C-ordered; cell rows are the lattice vectors;
 *   - every function is thread-safe and re-entrant; the only global state is the
 *     code path of the vector kernels (gm_set_isa);
 *   - a negative return value is an error code (see GM_E*), never a partial result.
 */
#ifndef GMETAD_H
#define GMETAD_H

#define GM_OK 0
#define GM_EINVAL -1   /* bad argument (cutoff <= 0, NaN position, unknown kind...) */
#define GM_ESINGULAR -2 /* cell is singular along a periodic direction */
#define GM_ENOMEM -3   /* allocation failed */

/* Number of columns of one symmetry-function parameter row:
 *   kind (2, 4 or 5), element1, element2 (0-based; -1 for G2), cutoff,
 *   c1, c2, c3 with G2: eta, Rs, unused; G4/G5: eta, zeta, lambda. */
#define GM_PARAM_COLUMNS 7

/*
 * Full neighbour list (i -> j and j -> i both listed) of all pairs closer than
 * `cutoff`, with a cell list. `pbc[d]` != 0 makes direction d periodic; the cell
 * may be triclinic and smaller than twice the cutoff (several images of one atom
 * are then distinct neighbours). Non-periodic directions need a non-singular cell
 * row only for binning; any non-zero vector not in the plane of the others works.
 *
 * Output, sorted by centre: pair_first[p] = i, pair_second[p] = j (atom index,
 * images folded), vectors[3p..3p+2] = r_j + image shift - r_i.
 * Returns the number of pairs found. When it exceeds `capacity`, only
 * `capacity` pairs are written and the caller retries with a larger buffer.
 */
long gm_neighbours(int n_atoms, const double *positions, const double *cell,
                   const int *pbc, double cutoff, long capacity,
                   int *pair_first, int *pair_second, double *vectors);

/*
 * Behler symmetry functions G2, G4, G5 (and their analytic derivatives) for the
 * centres `centres[0..n_centres-1]`, all of one element sharing the parameter
 * table `params` (n_funcs x GM_PARAM_COLUMNS).
 *
 * Neighbours come as a CSR full list: the pairs of atom i are
 * pair_offset[i] .. pair_offset[i+1]-1, with neighbour[p] (its element is
 * types[neighbour[p]]) and vectors[3p..3p+2] = R_ij.
 *
 * values: n_centres x n_funcs.
 * derivatives (may be NULL): for centre c, its pairs are written from row
 *   deriv_start[c] on, one (n_funcs x 3) block per pair in neighbour-list order:
 *   derivatives[((deriv_start[c] + q) * n_funcs + f) * 3 + k] = dG_f / dR_ij,k
 *   for the q-th pair of that centre. dG/dr_j then sums the blocks of pairs whose
 *   neighbour is j, and dG/dr_i = - (sum over all the centre's blocks).
 * Scratch: O(n^2) bytes per thread, n the largest neighbour count of a centre
 * (0.15 MB at n = 46 with the default set); GM_ENOMEM if it cannot be
 * allocated. Timings: benchmarks/README.md.
 * Returns GM_OK or a negative error code.
 */
int gm_symmetry_functions(int n_centres, const int *centres, const int *types,
                          const long *pair_offset, const int *neighbour,
                          const double *vectors, int n_funcs,
                          const double *params, double *values,
                          double *derivatives, const long *deriv_start);

/*
 * Sum of Gaussian hills at query points (one per biased atom):
 *   V(g) = sum_s h_s exp(-q_s / 2),  q_s = (g - mu_s)^T A_s (g - mu_s)
 * with A_s = inv_cov[s] (dim x dim, symmetric; adaptive hills) or, when inv_cov
 * is NULL, A_s = inv_var[s] * I (isotropic hills).
 *
 * Pruning: hills are grouped in blocks (order[block_first[b] ..
 * block_first[b] + block_count[b] - 1] are the hill indices of block b, with
 * centre block_centre[b], radius block_radius[b] >= max |mu_s - centre| and
 * block_min_eig[b] <= the smallest eigenvalue of every A_s of the block). A block
 * is skipped when
 *   block_min_eig * (|g - centre| - radius)^2 > q_cut,
 * a hill when min_eig[s] * |g - mu_s|^2 > q_cut; both bounds are rigorous, so
 * only hills with q_s > q_cut (exp(-q_cut/2) relative weight) are ever dropped.
 * q_cut <= 0 disables pruning. n_blocks = 0 means one block of all hills, in
 * index order (order may then be NULL).
 *
 * Output: energy[i] = V(g_i); gradient (may be NULL) n_query x dim = dV/dg;
 * nearest (may be NULL): the hill of smallest q_s among those not pruned for
 * query i (ties: the lowest index), -1 if all were pruned, and nearest_q (may be
 * NULL) that q_s (+inf if none). n_evaluated (may be NULL) receives the number of
 * (query, hill) pairs not pruned.
 * Results are bit-identical run to run and for any number of threads; the AVX2
 * and baseline code paths (see gm_set_isa) agree to round-off (about 1e-15).
 */
int gm_gaussian_sum(int n_query, int dim, const double *query, int n_hills,
                    const double *centres, const double *heights,
                    const double *inv_cov, const double *inv_var,
                    const double *min_eig, int n_blocks, const int *order,
                    const int *block_first, const int *block_count,
                    const double *block_centre, const double *block_radius,
                    const double *block_min_eig, double q_cut, double *energy,
                    double *gradient, int *nearest, double *nearest_q, long *n_evaluated);

/*
 * Code path of the vector kernels (gm_symmetry_functions, gm_gaussian_sum).
 * The first kernel call picks GM_ISA_AVX2 when the CPU has AVX2 and FMA, else
 * GM_ISA_BASELINE (SSE2, any x86-64). gm_set_isa forces one (GM_ISA_AUTO: the
 * default choice) and returns the path now in use, or GM_EINVAL when this CPU
 * or build cannot run it. It is the one process-wide setting of the kernels:
 * set it before any kernel runs in another thread. gm_isa returns the path in
 * use; gm_isa_available whether a path can run here.
 */
#define GM_ISA_AUTO 0
#define GM_ISA_BASELINE 1
#define GM_ISA_AVX2 2
int gm_set_isa(int isa);
int gm_isa(void);
int gm_isa_available(int isa);

/* Number of OpenMP threads the kernels use (1 when built without OpenMP). */
int gm_max_threads(void);

/*
 * Contractions of gm_symmetry_functions' derivative blocks for the centres of one
 * element (n_funcs functions). The blocks of centre c are the rows
 * block_offset[c] .. block_offset[c+1]-1 of `derivatives` (n_funcs x 3 each,
 * dG/dR_ij, pairs of a centre in neighbour-list order); row r is neighbour-list
 * entry pair_index[r], with atoms first[p] = i, second[p] = j and vector
 * vectors[3p..3p+2] = R_ij (gm_neighbours' arrays). Blocks are visited in row
 * order: results are bit-identical run to run and for any number of threads.
 * Both return GM_OK or GM_EINVAL (offsets decreasing, an atom index outside
 * [0, n_atoms)); gm_jacobian_products also GM_ENOMEM.
 *
 * gm_forces_virial: forces and virial of an energy E(G) given gradient
 * (n_centres x n_funcs) = dE/dG. With w_r = sum_f dE/dG_f dG_f/dR_ij of row r,
 * adds forces[i] += w_r, forces[j] -= w_r (forces: n_atoms x 3, -dE/dr) and
 * virial[a][b] -= w_r[a] R_ij[b] (3 x 3, -dE/d(strain)). Serial.
 *
 * gm_jacobian_products: products (n_centres x n_funcs x n_funcs) = J J^T, J the
 * dense dG/dr of a centre (n_funcs x 3 per column). images = 0: one column per
 * atom, periodic images folded onto their atom; the centre's column (atom
 * centre_atom[c]) holds -(sum of all its blocks) plus the blocks of pairs whose
 * neighbour is the centre itself. images != 0: the centre's column is -(sum of
 * all its blocks), then one column per block (centre_atom, pair_index, second
 * and n_atoms unused, may be NULL / 0). The output is exactly symmetric. Scratch
 * per thread: (largest block count + 1) x 3 x n_funcs doubles, plus n_atoms ints
 * when images = 0. OpenMP over centres.
 */
int gm_forces_virial(int n_centres, const long *block_offset, int n_funcs,
                     const double *derivatives, const double *gradient,
                     const long *pair_index, const int *first, const int *second,
                     const double *vectors, int n_atoms, double *forces, double *virial);
int gm_jacobian_products(int n_centres, const long *block_offset, int n_funcs,
                         const double *derivatives, int images, const int *centre_atom,
                         const long *pair_index, const int *second, int n_atoms,
                         double *products);

/*
 * Merge of two adaptive hills by moment matching (HillSet.merge_into):
 * hill 0 (height h0 in eV, centre mu0, metric a0 = S0^-1) and hill 1 (h1, mu1,
 * a1 = S1^-1), all of dimension dim; centres dimensionless, metrics and
 * covariances dim x dim, symmetric. With w_k = h_k / (h0 + h1) and
 * d = mu0 - mu1:
 *   mu         = mu1 + w0 d                 (the height-weighted centre)
 *   covariance = w0 S0 + w1 S1 + w0 w1 d d^T
 *   metric     = covariance^-1
 *   height     = h0 exp(-q0/2) + h1 exp(-q1/2),
 *                q0 = w1^2 d^T a0 d, q1 = w0^2 d^T a1 d (the two hills at mu).
 * s0, s1: the covariances when the caller has them, else NULL (then a0, a1 are
 * inverted here). The inversions (Cholesky factor, its triangular inverse) and
 * the sum read the upper triangles of a0, a1, s0 and s1 (the quadratic forms
 * read all of a0 and a1); covariance and metric are written exactly
 * symmetric. Outputs may not alias inputs.
 * Returns GM_OK (then mu, height and metric are finite); GM_ENOTPD when a
 * matrix to invert is not positive definite or a result is not finite, then mu
 * and height are untouched and metric and covariance undefined; GM_EINVAL for
 * dim <= 0 or h0 + h1 <= 0; GM_ENOMEM.
 * Deterministic (fixed loop order; bit-identical run to run).
 */
#define GM_ENOTPD -4   /* a matrix to invert is not positive definite */
int gm_merge_hills(int dim, double h0, const double *mu0, const double *a0, const double *s0,
                   double h1, const double *mu1, const double *a1, const double *s1,
                   double *mu, double *height, double *metric, double *covariance);

#endif /* GMETAD_H */
