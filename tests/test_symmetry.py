"""Symmetry functions: values against DScribe, analytic derivatives, strain, forces.

DScribe conventions (read from dscribe/ext/acsf.cpp and descriptors/acsf.py, 2.1):

- species are sorted by atomic number (dscribe.utils.species.get_atomic_numbers),
  whatever order the user gives;
- one row per centre: for each neighbour species t (sorted order) a block
  [G1, G2(eta_1, Rs_1) ..., G3 ...] of 1 + n_g2 + n_g3 columns, then for each
  unordered species pair (t1 >= t2, index t1 (t1 + 1) / 2 + t2, i.e. (0,0), (1,0),
  (1,1), ...) a block [G4 ..., G5 ...] of n_g4 + n_g5 columns;
- G1 = sum_j fc(R_ij), i.e. our G2 with eta = 0, Rs = 0;
- G4 = 2 (0.5 (1 + lambda cos))^zeta exp(-eta (R_ij^2 + R_ik^2 + R_jk^2)) fc fc fc
     = 2^(1 - zeta) (1 + lambda cos)^zeta ..., summed over neighbour pairs k < j
  (indices of the periodically extended system, so every unordered pair of
  neighbour entries once, images being distinct entries): identical to our G4;
- DScribe's G5 is the same without R_jk^2 and without fc(R_jk): identical to our G5;
- one cutoff per descriptor object: tables with several cutoffs are compared
  one cutoff group at a time.

So the mapping is a column permutation only, no rescaling; the comparison is at
1e-10 relative.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111
from ase.data import atomic_numbers
from dscribe.descriptors import ACSF

from biasserver.symmetry import (DEFAULT_G2_ETAS, DEFAULT_G4_ETAS, DEFAULT_G4_LAMBDAS,
                                 DEFAULT_G4_ZETAS, Descriptors, SymmetryFunctions)

FD_STEP = 1e-5       # angstrom
STRAIN_STEP = 2e-6   # dimensionless: moves a 6 A distance by 1.2e-5 A
FD_RTOL = 1e-6
FD_ATOL = 1e-7


# -- structures --------------------------------------------------------------

def si64() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return atoms


def si_triclinic() -> Atoms:
    """8 Si in a sheared, rotated cell (smaller than 2 Rc, so images count too)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    shear = np.array([[1.0, 0.18, -0.1], [0.12, 1.05, 0.22], [-0.15, 0.08, 0.97]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    rot, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    atoms.set_cell(atoms.cell.array @ rot.T, scale_atoms=True)
    atoms.rattle(0.08, seed=2)
    atoms.wrap()
    return atoms


def si_primitive() -> Atoms:
    """2-atom fcc primitive cell, |a| = 3.84 A < Rc: many images of each atom."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    atoms.wrap()
    return atoms


def si_one_atom() -> Atoms:
    cell = np.array([[2.63, 0.0, 0.0], [0.41, 2.83, 0.0], [-0.31, 0.52, 3.04]])
    return Atoms("Si", positions=[[0.2, 0.1, 0.3]], cell=cell, pbc=True)


def sic(repeat=(2, 2, 1)) -> Atoms:
    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True) * repeat
    atoms.rattle(0.06, seed=5)
    atoms.wrap()
    return atoms


def sic8() -> Atoms:
    """Conventional zincblende SiC cell (8 atoms, 4.36 A < Rc)."""
    return sic((1, 1, 1))


def gete() -> Atoms:
    """Rocksalt GeTe primitive cell (2 atoms, triclinic, strained)."""
    atoms = bulk("GeTe", "rocksalt", a=6.0)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.03, 0], [0, 0.98, 0.04], [0.02, 0, 1.01]]),
                   scale_atoms=True)
    atoms.rattle(0.1, seed=6)
    atoms.wrap()
    return atoms


def si_cluster() -> Atoms:
    big = si64()
    centre = big.positions[10] + np.array([0.3, -0.2, 0.1])
    keep = np.linalg.norm(big.positions - centre, axis=1) < 5.2
    atoms = Atoms(big.get_chemical_symbols(), positions=big.positions, pbc=False)[keep]
    atoms.cell = np.zeros((3, 3))
    return atoms


def sic_cluster() -> Atoms:
    big = sic()
    keep = np.linalg.norm(big.positions - big.positions[3], axis=1) < 4.6
    atoms = Atoms(big.get_chemical_symbols(), positions=big.positions, pbc=False)[keep]
    atoms.cell = np.zeros((3, 3))
    return atoms


def pt_slab() -> Atoms:
    slab = fcc111("Pt", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "H", 1.2, "fcc")
    slab.rattle(0.05, seed=7)
    slab.wrap()
    return slab


STRUCTURES = {
    "si64": (si64, ("Si",)),
    "triclinic": (si_triclinic, ("Si",)),
    "primitive": (si_primitive, ("Si",)),
    "one_atom": (si_one_atom, ("Si",)),
    "sic": (sic, ("Si", "C")),
    "sic8": (sic8, ("Si", "C")),
    "gete": (gete, ("Te", "Ge")),          # deliberately not in atomic-number order
    "cluster": (si_cluster, ("Si",)),
    "sic_cluster": (sic_cluster, ("C", "Si")),
    "slab": (pt_slab, ("Pt", "H")),
}
DERIVATIVE_CASES = ["si64", "triclinic", "primitive", "one_atom", "sic8", "gete", "cluster",
                    "sic_cluster", "slab"]


def custom_set(elements) -> SymmetryFunctions:
    """Every kind, several cutoffs, G2 with Rs != 0, integer and non-integer zeta,
    both lambdas, rows of different kinds interleaved, some pairs given as (b, a)."""
    n = len(elements)
    tables = {}
    for c, centre in enumerate(elements):
        rows = []
        for e in range(n):
            rows += [[2, e, -1, 6.0, 0.05, 0.0, 0.0],
                     [2, e, -1, 5.0, 0.6, 2.4, 0.0],
                     [2, e, -1, 4.5, 1.2, 3.8, 0.0],
                     [2, e, -1, 6.0, 0.0, 0.0, 0.0]]   # eta = 0: DScribe's G1
        for a, b in itertools.combinations_with_replacement(range(n), 2):
            if (a + b + c) % 2:
                a, b = b, a
            rows += [[4, a, b, 6.0, 0.01, 1.0, -1.0],
                     [5, a, b, 6.0, 0.01, 1.0, 1.0],
                     [4, a, b, 5.2, 0.05, 2.0, 1.0],
                     [5, a, b, 4.8, 0.03, 4.0, -1.0],
                     [4, a, b, 6.0, 0.02, 3.7, -1.0],
                     [5, a, b, 5.5, 0.005, 1.5, 1.0]]
        order = np.random.default_rng(c).permutation(len(rows))  # interleave kinds
        tables[centre] = np.array(rows)[order]
    return SymmetryFunctions(elements, tables)


# -- DScribe reference ------------------------------------------------------------

def dscribe_values(sf: SymmetryFunctions, atoms: Atoms, element: str) -> np.ndarray:
    """Our (n_e, F_e) table for centres of `element`, computed with DScribe."""
    table = sf.tables[element]
    centres = [k for k, s in enumerate(atoms.get_chemical_symbols()) if s == element]
    out = np.full((len(centres), len(table)), np.nan)
    z_sorted = sorted(atomic_numbers[e] for e in sf.elements)
    rank = {e: z_sorted.index(atomic_numbers[e]) for e in sf.elements}   # DScribe type index
    n_types = len(sf.elements)
    for rc in np.unique(table[:, 3]):
        rows = np.flatnonzero(table[:, 3] == rc)
        g2, g4, g5 = [], [], []     # distinct parameter tuples, in order of appearance
        for r in rows:
            kind, _, _, _, c1, c2, c3 = table[r]
            if kind == 2 and (c1, c2) != (0.0, 0.0):
                target, params = g2, (c1, c2)
            elif kind in (4, 5):
                target, params = (g4 if kind == 4 else g5), (c1, c2, c3)
            else:
                continue                  # eta = Rs = 0: DScribe's G1 column
            if params not in target:
                target.append(params)
        acsf = ACSF(r_cut=float(rc), g2_params=[list(p) for p in g2] or None,
                    g4_params=[list(p) for p in g4] or None,
                    g5_params=[list(p) for p in g5] or None,
                    species=list(sf.elements), periodic=bool(atoms.pbc.any()))
        assert acsf.get_number_of_features() == n_types * (1 + len(g2)) + \
            n_types * (n_types + 1) // 2 * (len(g4) + len(g5))
        ref = acsf.create(atoms, centers=centres) if centres else np.zeros((0, 1))
        ref = np.atleast_2d(ref)
        for r in rows:
            kind, e1, e2, _, c1, c2, c3 = table[r]
            t1 = rank[sf.elements[int(e1)]]
            if kind == 2:
                block = t1 * (1 + len(g2))
                col = block if (c1 == 0 and c2 == 0) else block + 1 + g2.index((c1, c2))
            else:
                t2 = rank[sf.elements[int(e2)]]
                hi, lo = max(t1, t2), min(t1, t2)
                block = n_types * (1 + len(g2)) + (hi * (hi + 1) // 2 + lo) * (len(g4) + len(g5))
                col = block + (g4.index((c1, c2, c3)) if kind == 4 else len(g4) + g5.index((c1, c2, c3)))
            out[:, r] = ref[:, col]
    return out


def numpy_reference(sf: SymmetryFunctions, atoms: Atoms, element: str) -> np.ndarray:
    """Brute-force numpy G2/G4/G5 straight from design.md, on ASE's neighbour list."""
    from ase.neighborlist import neighbor_list
    table = sf.tables[element]
    species = sf.species(atoms)
    ii, jj, dd = neighbor_list("ijD", atoms, sf.cutoff)
    centres = np.flatnonzero(species == sf.elements.index(element))
    out = np.zeros((len(centres), len(table)))
    for c, atom in enumerate(centres):
        vec, typ = dd[ii == atom], species[jj[ii == atom]]
        r = np.linalg.norm(vec, axis=1)
        a, b = np.triu_indices(len(r), k=1)
        cos = np.einsum("pk,pk->p", vec[a], vec[b]) / (r[a] * r[b])
        rjk = np.linalg.norm(vec[b] - vec[a], axis=1)
        for f, (kind, e1, e2, rc, c1, c2, c3) in enumerate(table):
            fc = lambda x: np.where(x < rc, 0.5 * (np.cos(np.pi * x / rc) + 1), 0.0)  # noqa: E731
            if kind == 2:
                m = typ == e1
                out[c, f] = np.sum(np.exp(-c1 * (r[m] - c2) ** 2) * fc(r[m]))
                continue
            m = ((typ[a] == e1) & (typ[b] == e2)) | ((typ[a] == e2) & (typ[b] == e1))
            ang = 2 ** (1 - c2) * np.maximum(1 + c3 * cos[m], 0.0) ** c2
            rad2 = r[a][m] ** 2 + r[b][m] ** 2 + (rjk[m] ** 2 if kind == 4 else 0.0)
            cut = fc(r[a][m]) * fc(r[b][m]) * (fc(rjk[m]) if kind == 4 else 1.0)
            out[c, f] = np.sum(ang * np.exp(-c1 * rad2) * cut)
    return out


def assert_matches_dscribe(sf, atoms):
    values = sf.values(atoms)
    for element in sf.elements:
        ref = dscribe_values(sf, atoms, element)
        ours = values[element]
        # DScribe evaluates pow(0.5 (1 + lambda cos), zeta) without clamping: for
        # an exactly collinear triplet (the centre's own images i - L, i + L in a
        # small cell) round-off makes the base -1e-17 and a non-integer zeta gives
        # NaN. Those columns are checked against the brute-force reference instead.
        nan_cols = np.isnan(ref).any(axis=0)
        if nan_cols.any():
            zeta = sf.tables[element][nan_cols, 5]
            assert np.all(sf.tables[element][nan_cols, 0] != 2) and np.all(zeta != np.round(zeta))
            assert np.isfinite(ours).all()
            ref[:, nan_cols] = numpy_reference(sf, atoms, element)[:, nan_cols]
        assert ours.shape == ref.shape
        if ours.size == 0:
            continue
        assert np.abs(ref).max() > 0
        # 1e-10 relative element by element, plus 1e-14 of the function's largest
        # value: a G4 of a near-collinear triplet, (1 - cos)^zeta, is a round-off
        # residue whose digits depend on the vector width and FMA
        err = np.abs(ours - ref)
        bad = err > 1e-10 * np.abs(ref) + 1e-14 * np.abs(ref).max(axis=0)
        assert not bad.any(), (
            f"centres {element}: {bad.sum()} values differ from DScribe, worst relative "
            f"{(err / np.maximum(np.abs(ref), 1e-300)).max():.3g}")


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_default_set_matches_dscribe(name):
    build, elements = STRUCTURES[name]
    assert_matches_dscribe(SymmetryFunctions.default(elements), build())


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_custom_set_with_g5_and_rs_matches_dscribe(name):
    build, elements = STRUCTURES[name]
    assert_matches_dscribe(custom_set(elements), build())


def test_dscribe_mapping_is_not_vacuous():
    """The column map must hit different DScribe columns for different rows, and
    the two-element G4 blocks of a mixed pair must differ from the pure ones."""
    sf = SymmetryFunctions.default(["Si", "C"])
    atoms = sic()
    ours = sf.values(atoms)["Si"]
    t = sf.tables["Si"]
    pure = ours[:, (t[:, 0] == 4) & (t[:, 1] == 0) & (t[:, 2] == 0)]
    mixed = ours[:, (t[:, 0] == 4) & (t[:, 1] == 0) & (t[:, 2] == 1)]
    assert pure.shape == mixed.shape == (16, 18)
    assert not np.allclose(pure, mixed)
    # permuting the atoms' species labels must be detected by the comparison
    swapped = atoms.copy()
    swapped.set_chemical_symbols(["C" if s == "Si" else "Si" for s in atoms.get_chemical_symbols()])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(sf.values(swapped)["C"], ours, rtol=1e-6)


def test_g4_hand_computed_three_atoms():
    """G2, G4, G5 of a three-atom molecule, written out by hand from design.md."""
    pos = np.array([[0.0, 0.0, 0.0], [2.1, 0.3, 0.0], [-0.4, 1.9, 0.5]])
    atoms = Atoms("Si3", positions=pos)
    rc, eta, zeta, lam, rs = 5.0, 0.07, 3.0, -1.0, 1.1
    sf = SymmetryFunctions(["Si"], {"Si": [[2, 0, -1, rc, eta, rs, 0],
                                           [4, 0, 0, rc, eta, zeta, lam],
                                           [5, 0, 0, rc, eta, zeta, lam]]})
    g = sf.values(atoms)["Si"][0]
    fc = lambda r: 0.5 * (np.cos(np.pi * r / rc) + 1)  # noqa: E731
    a, b = pos[1] - pos[0], pos[2] - pos[0]
    ra, rb, rjk = np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(b - a)
    cos = a @ b / (ra * rb)
    g2 = sum(np.exp(-eta * (r - rs) ** 2) * fc(r) for r in (ra, rb))
    ang = 2 ** (1 - zeta) * (1 + lam * cos) ** zeta
    g4 = ang * np.exp(-eta * (ra**2 + rb**2 + rjk**2)) * fc(ra) * fc(rb) * fc(rjk)
    g5 = ang * np.exp(-eta * (ra**2 + rb**2)) * fc(ra) * fc(rb)
    np.testing.assert_allclose(g, [g2, g4, g5], rtol=1e-13)


# -- derivative helpers -------------------------------------------------------

def stacked_values(sf, atoms):
    v = sf.values(atoms)
    return {e: v[e].copy() for e in sf.elements}


def dense_from_sparse(desc: Descriptors, element: str) -> np.ndarray:
    """dG_c/dr_n (n_e, F_e, N, 3) rebuilt from the documented sparse form."""
    deriv = desc.derivatives[element]
    pairs = desc.pair_index[element]
    centre = desc.pair_centre[element]
    j = desc.neighbours.second[pairs]
    i = desc.indices[element][centre]
    # the documented invariant: the pair's first atom is its centre
    np.testing.assert_array_equal(desc.neighbours.first[pairs], i)
    out = np.zeros((len(desc.indices[element]), deriv.shape[1], desc.n_atoms, 3))
    np.add.at(out, (centre, slice(None), j), deriv)
    np.add.at(out, (centre, slice(None), i), -deriv)
    return out


def displaced_atoms(atoms, limit: int = 6) -> list[int]:
    """A few atoms to move (all of a small structure), covering every element."""
    if len(atoms) <= limit:
        return list(range(len(atoms)))
    symbols = atoms.get_chemical_symbols()
    chosen = {symbols.index(s) for s in set(symbols)}
    chosen.add(len(atoms) // 2)
    return sorted(chosen)[:max(limit, len(set(symbols)))]


def strained(atoms, eps):
    out = atoms.copy()
    f = np.eye(3) + eps
    out.positions = atoms.positions @ f.T
    out.cell = atoms.cell.array @ f.T
    return out


def distance_to_cutoffs(sf: SymmetryFunctions, atoms: Atoms) -> float:
    """Smallest | R - Rc | over pair distances R_ij and R_jk of every triplet and
    every cutoff of the set. A distance sitting on a cutoff sphere puts the kink
    of fc'' inside a finite-difference stencil and spoils the O(h^2) accuracy,
    so the structures must keep clear of them."""
    from ase.neighborlist import neighbor_list
    cutoffs = np.unique(np.concatenate([t[:, 3] for t in sf.tables.values()]))
    first, vec = neighbor_list("iD", atoms, sf.cutoff + 0.01)
    gap = np.inf
    for i in range(len(atoms)):
        v = vec[first == i]
        a, b = np.triu_indices(len(v), k=1)
        dist = np.concatenate([np.linalg.norm(v, axis=1), np.linalg.norm(v[b] - v[a], axis=1)])
        gap = min(gap, np.abs(dist[:, None] - cutoffs[None, :]).min(initial=np.inf))
    return gap


@pytest.fixture(scope="module", params=DERIVATIVE_CASES)
def case(request):
    build, elements = STRUCTURES[request.param]
    atoms = build()
    sf = custom_set(elements)
    reach = max(FD_STEP, STRAIN_STEP * 2 * sf.cutoff)
    assert distance_to_cutoffs(sf, atoms) > 2 * reach, "test structure has a distance on a cutoff"
    return request.param, sf, atoms, sf.compute(atoms)


# -- analytic derivatives vs finite differences ---------------------------------

def test_derivatives_vs_finite_differences(case):
    name, sf, atoms, desc = case
    dense = {e: dense_from_sparse(desc, e) for e in sf.elements}
    checked = 0
    for n in displaced_atoms(atoms):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[n, k] += FD_STEP
            minus.positions[n, k] -= FD_STEP
            gp, gm = stacked_values(sf, plus), stacked_values(sf, minus)
            for e in sf.elements:
                fd = (gp[e] - gm[e]) / (2 * FD_STEP)
                np.testing.assert_allclose(
                    dense[e][:, :, n, k], fd, rtol=FD_RTOL, atol=FD_ATOL,
                    err_msg=f"{name}: dG({e})/dr[{n},{k}]")
                checked += np.count_nonzero(np.abs(fd) > 1e-3)
    if name != "one_atom":   # a lone atom's G does not depend on its own position
        assert checked > 0, "no non-zero derivative was checked"


@pytest.mark.parametrize("kind", [2, 4, 5])
def test_derivatives_per_kind_nonzero_and_correct(case, kind):
    """Every kind has derivatives that are substantially non-zero and right."""
    name, sf, atoms, desc = case
    n = 0
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[n, 1] += FD_STEP
    minus.positions[n, 1] -= FD_STEP
    gp, gm = stacked_values(sf, plus), stacked_values(sf, minus)
    seen = 0.0
    for e in sf.elements:
        cols = sf.tables[e][:, 0] == kind
        fd = ((gp[e] - gm[e]) / (2 * FD_STEP))[:, cols]
        an = dense_from_sparse(desc, e)[:, cols, n, 1]
        np.testing.assert_allclose(an, fd, rtol=FD_RTOL, atol=FD_ATOL)
        seen = max(seen, np.abs(fd).max(initial=0.0))
    if name != "one_atom":   # a lone atom's G does not depend on its own position
        assert seen > 1e-3, f"G{kind} derivatives all vanish for {name}"


def test_jacobian_method(case):
    name, sf, atoms, desc = case
    for e in sf.elements:
        dense = dense_from_sparse(desc, e)
        for c in range(min(3, len(desc.indices[e]))):
            atom_ids, jac = desc.jacobian(e, c)
            assert atom_ids[0] == desc.indices[e][c], "centre must come first"
            assert len(set(atom_ids.tolist())) == len(atom_ids)
            assert jac.shape == (sf.size(e), len(atom_ids), 3)
            np.testing.assert_allclose(jac, dense[c][:, atom_ids], rtol=0, atol=1e-12)
            others = np.setdiff1d(np.arange(len(atoms)), atom_ids)
            assert np.all(dense[c][:, others] == 0)
            # translation invariance: the columns sum to zero
            np.testing.assert_allclose(jac.sum(axis=1), 0, atol=1e-10)


def test_jacobian_vs_finite_differences_one_centre(case):
    name, sf, atoms, desc = case
    e = next(e for e in reversed(sf.elements) if len(desc.indices[e]))
    atom_ids, jac = desc.jacobian(e, 0)
    for m, n in enumerate(atom_ids[:2]):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[n, k] += FD_STEP
            minus.positions[n, k] -= FD_STEP
            fd = (sf.values(plus)[e][0] - sf.values(minus)[e][0]) / (2 * FD_STEP)
            np.testing.assert_allclose(jac[:, m, k], fd, rtol=FD_RTOL, atol=FD_ATOL)


def test_one_atom_cell_self_images():
    """A lone atom sees only its own images: G is independent of its position,
    so dG/dr = 0 although every individual pair derivative is non-zero."""
    sf = custom_set(("Si",))
    desc = sf.compute(si_one_atom())
    assert np.abs(desc.derivatives["Si"]).max() > 1e-2
    atom_ids, jac = desc.jacobian("Si", 0)
    assert list(atom_ids) == [0]
    np.testing.assert_allclose(jac, 0, atol=1e-10)


def test_isolated_atom_has_zero_values_and_jacobian():
    atoms = si_cluster()
    atoms += Atoms("Si", positions=[[50.0, 50.0, 50.0]])
    sf = custom_set(("Si",))
    desc = sf.compute(atoms)
    lonely = len(atoms) - 1
    assert np.all(desc.values["Si"][lonely] == 0)
    atom_ids, jac = desc.jacobian("Si", lonely)
    assert list(atom_ids) == [lonely] and jac.shape == (sf.size("Si"), 1, 3)
    assert np.all(jac == 0)


# -- strain --------------------------------------------------------------------

def test_strain_derivatives_vs_finite_strain(case):
    name, sf, atoms, desc = case
    analytic = {e: desc.strain_derivatives(e) for e in sf.elements}
    for e in sf.elements:
        assert analytic[e].shape == (len(desc.indices[e]), sf.size(e), 3, 3)
    for a, b in itertools.product(range(3), range(3)):
        eps = np.zeros((3, 3))
        eps[a, b] = STRAIN_STEP
        gp, gm = stacked_values(sf, strained(atoms, eps)), stacked_values(sf, strained(atoms, -eps))
        for e in sf.elements:
            fd = (gp[e] - gm[e]) / (2 * STRAIN_STEP)
            np.testing.assert_allclose(analytic[e][..., a, b], fd, rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"{name}: dG({e})/d eps[{a},{b}]")


def test_strain_symmetric_and_antisymmetric_parts(case):
    """Symmetric strain changes G (first order); a rotation does not: the
    strain derivative is a symmetric tensor, as finite rotations confirm."""
    name, sf, atoms, desc = case
    for e in sf.elements:
        s = desc.strain_derivatives(e)
        np.testing.assert_allclose(s, np.swapaxes(s, -1, -2), atol=1e-9)
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 3))
    for eps_dir in ((m + m.T) / 2, (m - m.T) / 2):
        eps = STRAIN_STEP * eps_dir
        gp, gm = stacked_values(sf, strained(atoms, eps)), stacked_values(sf, strained(atoms, -eps))
        for e in sf.elements:
            fd = (gp[e] - gm[e]) / (2 * STRAIN_STEP)
            an = np.einsum("cfab,ab->cf", desc.strain_derivatives(e), eps_dir)
            np.testing.assert_allclose(an, fd, rtol=FD_RTOL, atol=FD_ATOL)


# -- forces and virial of E = sum_i w . G_i -------------------------------------

def test_forces_virial_of_linear_energy(case):
    name, sf, atoms, desc = case
    rng = np.random.default_rng(42)
    w = {e: rng.normal(size=sf.size(e)) for e in sf.elements}

    def energy(at):
        v = sf.values(at)
        return sum(float(v[e].sum(axis=0) @ w[e]) for e in sf.elements)

    grads = {e: np.tile(w[e], (len(desc.indices[e]), 1)) for e in sf.elements}
    forces, virial = desc.forces_virial(grads)
    assert forces.shape == (len(atoms), 3) and virial.shape == (3, 3)

    for n in displaced_atoms(atoms, limit=3):   # assembly check; test above is exhaustive
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[n, k] += FD_STEP
            minus.positions[n, k] -= FD_STEP
            fd = -(energy(plus) - energy(minus)) / (2 * FD_STEP)
            np.testing.assert_allclose(forces[n, k], fd, rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"{name}: F[{n},{k}]")
    np.testing.assert_allclose(forces.sum(axis=0), 0, atol=1e-9)   # translation invariance

    for a, b in itertools.product(range(3), range(3)):
        eps = np.zeros((3, 3))
        eps[a, b] = STRAIN_STEP
        fd = -(energy(strained(atoms, eps)) - energy(strained(atoms, -eps))) / (2 * STRAIN_STEP)
        np.testing.assert_allclose(virial[a, b], fd, rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"{name}: virial[{a},{b}]")
    np.testing.assert_allclose(virial, virial.T, atol=1e-9)
    if not atoms.pbc.any():
        # isolated system: the virial is sum_n r_n F_n (no lattice term)
        np.testing.assert_allclose(virial, atoms.positions.T @ forces, atol=1e-8)


def test_forces_virial_consistent_with_strain_derivatives():
    atoms, sf = sic(), SymmetryFunctions.default(["Si", "C"])
    desc = sf.compute(atoms)
    rng = np.random.default_rng(1)
    grads = {e: rng.normal(size=desc.values[e].shape) for e in sf.elements}   # per-centre dE/dG
    _, virial = desc.forces_virial(grads)
    expected = -sum(np.einsum("cf,cfab->ab", grads[e], desc.strain_derivatives(e)) for e in sf.elements)
    np.testing.assert_allclose(virial, expected, atol=1e-10)


# -- values() layout -------------------------------------------------------------

def test_default_sizes_and_tables():
    one = SymmetryFunctions.default(["Si"])
    two = SymmetryFunctions.default(["Si", "Ge"])
    three = SymmetryFunctions.default(["Si", "Ge", "O"])
    assert one.size("Si") == 26
    assert two.size("Si") == two.size("Ge") == 70
    assert three.size("O") == 3 * 8 + 6 * 18
    assert one.cutoff == 6.0
    t = one.tables["Si"]
    np.testing.assert_array_equal(t[t[:, 0] == 2, 4], DEFAULT_G2_ETAS)
    assert np.all(t[t[:, 0] == 2, 5] == 0)
    g4 = {tuple(r[4:7]) for r in t[t[:, 0] == 4]}
    assert g4 == set(itertools.product(DEFAULT_G4_ETAS, DEFAULT_G4_ZETAS, DEFAULT_G4_LAMBDAS))
    assert SymmetryFunctions.default(["Si"], cutoff=4.5).cutoff == 4.5


def test_values_dict_in_atom_order():
    atoms = sic()
    sf = SymmetryFunctions.default(["Si", "C"])
    v = sf.values(atoms)
    assert list(v) == ["Si", "C"]
    symbols = np.array(atoms.get_chemical_symbols())
    for e in ("Si", "C"):
        assert v[e].shape == (np.sum(symbols == e), 70)
    # reorder the atoms: rows follow the new atom order within each element
    perm = np.random.default_rng(3).permutation(len(atoms))
    v2 = sf.values(atoms[perm])
    for e in ("Si", "C"):
        orig_idx = np.flatnonzero(symbols == e)              # row r <-> atom orig_idx[r]
        new_idx = perm[symbols[perm] == e]                   # original index of each new row
        rows = np.searchsorted(orig_idx, new_idx)
        np.testing.assert_allclose(v2[e], v[e][rows], rtol=1e-12, atol=1e-14)
    # compute() agrees with values()
    d = sf.compute(atoms)
    for e in ("Si", "C"):
        np.testing.assert_array_equal(d.indices[e], np.flatnonzero(symbols == e))
        np.testing.assert_allclose(d.values[e], v[e], rtol=1e-13, atol=1e-15)


def test_element_of_the_set_absent_from_structure():
    sf = SymmetryFunctions.default(["Si", "Ge"])
    v = sf.values(si64())
    assert v["Si"].shape == (64, 70) and v["Ge"].shape == (0, 70)
    # no Ge neighbours: all Ge-related functions vanish
    t = sf.tables["Si"]
    ge_cols = (t[:, 1] == 1) | (t[:, 2] == 1)
    assert np.all(v["Si"][:, ge_cols] == 0) and np.all(v["Si"][:, ~ge_cols].max(axis=0) > 0)
    d = sf.compute(si64())
    f, w = d.forces_virial({"Si": np.ones((64, 70)), "Ge": np.ones((0, 70))})
    assert np.isfinite(f).all() and np.isfinite(w).all()


# -- errors --------------------------------------------------------------------

def test_unknown_element_in_structure():
    atoms = si64()
    atoms[5].symbol = "Ge"
    sf = SymmetryFunctions.default(["Si"])
    for method in (sf.values, sf.compute):
        with pytest.raises(ValueError) as info:
            method(atoms)
        message = str(info.value)
        assert "atom 5" in message and "Ge" in message


@pytest.mark.parametrize("cutoff", [0.0, -2.0, float("nan"), float("inf")])
def test_default_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        SymmetryFunctions.default(["Si"], cutoff=cutoff)


def test_nan_position():
    atoms = si64()
    atoms.positions[7, 2] = np.nan
    sf = SymmetryFunctions.default(["Si"])
    for method in (sf.values, sf.compute):
        with pytest.raises(ValueError, match=r"atom 7 .*not finite"):
            method(atoms)


def test_constructor_rejects_bad_tables():
    with pytest.raises(ValueError, match="index"):
        SymmetryFunctions(["Si"], {"Si": [[2, 1, -1, 6.0, 0.1, 0.0, 0.0]]})
    with pytest.raises(ValueError, match="cutoff"):
        SymmetryFunctions(["Si"], {"Si": [[2, 0, -1, 0.0, 0.1, 0.0, 0.0]]})
    with pytest.raises(ValueError, match="no symmetry functions"):
        SymmetryFunctions(["Si", "C"], {"Si": [[2, 0, -1, 6.0, 0.1, 0.0, 0.0]]})
    with pytest.raises(ValueError, match="duplicate"):
        SymmetryFunctions(["Si", "Si"], {"Si": [[2, 0, -1, 6.0, 0.1, 0.0, 0.0]]})


def test_coincident_atoms_are_an_error_not_nan():
    from ase import Atoms
    from biasserver.symmetry import SymmetryFunctions
    atoms = Atoms("Si3", positions=[[0, 0, 0], [1.2, 0.3, 0], [1.2, 0.3, 0]])
    with pytest.raises(ValueError, match="atoms 1 and 2 sit on the same position"):
        SymmetryFunctions.default(["Si"], cutoff=4.0).values(atoms)
