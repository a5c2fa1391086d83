/* Stillinger-Weber benchmark engine (benchmarks/engines/sw.c).
 *
 * sw_compute: energy (eV), forces (n_atoms x 3, eV/angstrom) and the virial
 * W[a][b] = sum over pair vectors v_a dE/dv_b (eV; stress = W / volume) of one
 * element from a full neighbour list sorted by centre: pairs of atom i are
 * offset[i] .. offset[i + 1] - 1, first[p] = i, second[p] = j (image folded onto j),
 * vectors[p] = r_j + shift - r_i (angstrom). Pairs at r >= a sigma are ignored.
 * costheta0 has matscipy's sign (+1/3 for the tetrahedral angle). Returns 0, -1 for
 * an inconsistent list, -2 when out of memory. virial may be NULL.
 */
int sw_compute(int n_atoms, const int *first, const int *second, const double *vectors,
               const long long *offset, double epsilon, double sigma, double a,
               double lambda, double gamma, double A, double B, double p, double q,
               double costheta0, double *energy, double *forces, double *virial);
