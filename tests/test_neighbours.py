"""The C cell-list neighbour search (biasserver.kernels.neighbour_list) against ASE.

Every case compares the full set of (i, j, R_ij) triples with
``ase.neighborlist.neighbor_list('ijD', ...)``, an independent implementation.
Structures are rattled so that no pair sits on the cutoff sphere (where a
round-off difference could legitimately decide "in" or "out").
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from biasserver.kernels import NeighbourList, neighbour_list


# -- helpers -----------------------------------------------------------------

def _sorted_triples(i, j, d):
    """(i, j, D) sorted lexicographically on i, j, then D rounded to 1e-5 A."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    d = np.asarray(d, dtype=np.float64).reshape(-1, 3)
    key = np.round(d, 5)
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], j, i))
    return i[order], j[order], d[order]


def assert_same_as_ase(atoms: Atoms, cutoff: float) -> NeighbourList:
    nl = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    ai, aj, ad = ase_neighbor_list("ijD", atoms, cutoff)
    assert len(ai) > 0, "test structure has no pairs: the comparison would be vacuous"

    # structural guarantees of NeighbourList
    n = len(atoms)
    assert nl.first.shape == nl.second.shape == (len(nl.vectors),)
    assert nl.vectors.shape == (len(nl.first), 3)
    assert np.all(np.diff(nl.first) >= 0), "pairs are not sorted by centre"
    assert nl.offset.shape == (n + 1,)
    assert nl.offset[0] == 0 and nl.offset[-1] == len(nl.first)
    for a in range(n):
        assert np.all(nl.first[nl.offset[a]:nl.offset[a + 1]] == a)
    assert np.all(nl.distances < cutoff)
    np.testing.assert_allclose(nl.distances, np.linalg.norm(nl.vectors, axis=1), rtol=0, atol=1e-12)

    # the vectors really are r_j - r_i + (lattice vector of the periodic directions)
    shift = nl.vectors - (atoms.positions[nl.second] - atoms.positions[nl.first])
    frac = np.linalg.solve(_full_rank(atoms).T, shift.T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-8)
    assert np.all(np.round(frac)[:, ~atoms.pbc] == 0), "image shift along a non-periodic direction"

    # vectors to 1e-12 A, or to 1e-15 of the coordinates for atoms far out
    atol = 1e-12 * max(1.0, 1e-3 * np.abs(atoms.positions).max())
    assert len(nl.first) == len(ai), f"C found {len(nl.first)} pairs, ASE {len(ai)}"
    ci, cj, cd = _sorted_triples(nl.first, nl.second, nl.vectors)
    ri, rj, rd = _sorted_triples(ai, aj, ad)
    np.testing.assert_array_equal(ci, ri)
    np.testing.assert_array_equal(cj, rj)
    np.testing.assert_allclose(cd, rd, rtol=0, atol=atol)
    if n <= 100:  # and a second, brute-force reference over explicit images
        bi, bj, bd = _sorted_triples(*_brute_force(atoms, cutoff))
        np.testing.assert_array_equal(ci, bi)
        np.testing.assert_array_equal(cj, bj)
        np.testing.assert_allclose(cd, bd, rtol=0, atol=atol)
    # no duplicated (i, j, image) entries
    keys = {(a, b, *np.round(v, 6)) for a, b, v in zip(ci, cj, cd)}
    assert len(keys) == len(ci), "duplicate pairs in the C list"
    # full list: (i, j, D) present implies (j, i, -D)
    _, _, back = _sorted_triples(nl.second, nl.first, -nl.vectors)
    np.testing.assert_allclose(back, cd, atol=1e-9)
    return nl


def _brute_force(atoms: Atoms, cutoff: float):
    """(i, j, D) of every pair closer than cutoff, by testing all atoms of all
    lattice shifts that can reach (numpy, no binning)."""
    pbc = atoms.pbc
    periodic = atoms.cell.array[pbc]
    pos = atoms.positions
    shifts = np.zeros((1, 3))
    if pbc.any():
        # wrap along the periodic vectors (the same vectors, found from other images),
        # then every shift n with |n_d| < cutoff / (plane spacing d) + 1 can reach
        proj = np.linalg.pinv(periodic)
        pos = pos - np.floor(pos @ proj) @ periodic
        reach = np.ceil(cutoff * np.linalg.norm(proj, axis=0)).astype(int) + 1
        n = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])), dtype=float)
        shifts = n.reshape(-1, len(periodic)) @ periodic
    d = pos[None, :, None, :] + shifts[None, None, :, :] - pos[:, None, None, :]  # (i, j, shift, 3)
    r = np.linalg.norm(d, axis=-1)
    i, j, k = np.nonzero((r < cutoff) & (r > 0))
    return i, j, d[i, j, k]


def _full_rank(atoms: Atoms) -> np.ndarray:
    """The cell with zero rows of non-periodic directions replaced (for shift checks)."""
    cell = atoms.cell.array.copy()
    for d in range(3):
        if np.linalg.norm(cell[d]) == 0:
            cell[d] = np.eye(3)[d] * 1e3
    if abs(np.linalg.det(cell)) < 1e-9:
        cell = np.eye(3) * 1e3
    return cell


def si64(rattle=0.05, seed=1) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(rattle, seed=seed)
    return atoms


def triclinic(n=24, seed=7) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.array([[6.3, 0.4, -0.2], [1.7, 5.9, 0.6], [-1.1, 1.4, 6.8]])
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # generic orientation
    cell = cell @ rot.T
    frac = rng.random((n, 3))
    return Atoms(f"Si{n}", scaled_positions=frac, cell=cell, pbc=True)


# -- periodic cells ------------------------------------------------------------

def test_cubic_si64():
    nl = assert_same_as_ase(si64(), 6.0)
    # sanity: ~ 4 + 12 + 12 + 6 + 12 + ... neighbours within 6 A in diamond
    assert 40 < len(nl.first) / 64 < 50


@pytest.mark.parametrize("cutoff", [2.6, 4.0, 6.0])
def test_cubic_si64_several_cutoffs(cutoff):
    assert_same_as_ase(si64(seed=3), cutoff)


def test_unrattled_atoms_on_cell_faces():
    # ideal diamond has atoms exactly at fractional 0; some are nudged to 1 - 1e-16
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.positions[0] = atoms.cell[0] * (1 - 1e-16)
    atoms.positions[1] -= 1e-15
    assert_same_as_ase(atoms, 5.0)


@pytest.mark.parametrize("seed", [7, 11])
def test_triclinic(seed):
    assert_same_as_ase(triclinic(seed=seed), 5.5)


def test_strongly_skewed_cell():
    # very acute angles: the plane spacing is much smaller than the vector lengths
    cell = np.array([[5.0, 0.0, 0.0], [4.6, 2.0, 0.0], [4.4, 1.7, 2.5]])
    rng = np.random.default_rng(5)
    atoms = Atoms("Si6", scaled_positions=rng.random((6, 3)), cell=cell, pbc=True)
    assert_same_as_ase(atoms, 4.5)


# -- cells smaller than twice the cutoff ---------------------------------------

def test_primitive_two_atom_cell_many_images():
    atoms = bulk("Si", "diamond", a=5.43)  # fcc primitive cell, |a| = 3.84 A
    atoms.rattle(0.02, seed=2)
    nl = assert_same_as_ase(atoms, 6.0)
    # many images of one atom are distinct neighbours of the same centre
    assert np.sum((nl.first == 0) & (nl.second == 0)) >= 12
    assert np.sum((nl.first == 0) & (nl.second == 1)) >= 16


def test_one_atom_cell():
    cell = np.array([[2.7, 0.0, 0.0], [0.5, 2.9, 0.0], [-0.3, 0.4, 3.1]])
    atoms = Atoms("Si", positions=[[0.3, 0.2, 0.1]], cell=cell, pbc=True)
    nl = assert_same_as_ase(atoms, 6.0)
    assert np.all(nl.first == 0) and np.all(nl.second == 0)
    # only images: no zero vector (an atom is not its own neighbour)
    assert np.all(nl.distances > 1.0)


def test_cutoff_much_larger_than_cell():
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, |a| = 2.55 A
    atoms.rattle(0.0)
    assert_same_as_ase(atoms, 9.3)


def test_small_triclinic_cell_with_several_atoms():
    # every lattice vector shorter than the cutoff, and skewed: one bin per
    # direction, and the search must reach images 2-3 cells away
    cell = np.array([[3.1, 0.0, 0.0], [1.2, 2.9, 0.0], [-0.8, 0.9, 3.3]])
    rng = np.random.default_rng(21)
    atoms = Atoms("Si3", scaled_positions=rng.random((3, 3)), cell=cell, pbc=True)
    nl = assert_same_as_ase(atoms, 7.0)
    assert np.sum((nl.first == 0) & (nl.second == 0)) > 20


def test_atoms_exactly_on_bin_boundaries():
    # simple cubic, spacing 2.95 A in an 11.8 A cell: with cutoff 5 A the bins are
    # a quarter of the cell wide, so every atom sits on a bin boundary (no pair is
    # near the cutoff: the distances are 2.95, 4.17 and 5.11 A)
    grid = np.array(list(itertools.product(range(4), repeat=3)), dtype=float) * 2.95
    atoms = Atoms(f"Si{len(grid)}", positions=grid, cell=np.eye(3) * 11.8, pbc=True)
    nl = assert_same_as_ase(atoms, 5.0)
    assert len(nl.first) == 18 * len(atoms)


@pytest.mark.parametrize("pbc", [True, (True, True, False), False])
def test_large_system(pbc):
    # Si1000 (27 A cube): many bins along every direction
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (5, 5, 5)
    atoms.rattle(0.05, seed=12)
    atoms.pbc = pbc
    nl = assert_same_as_ase(atoms, 6.0)
    if np.all(pbc):
        assert 40 < len(nl.first) / len(atoms) < 50


def test_order_is_reproducible():
    # the symmetry-function sums follow the order of the list: two calls, on
    # copies of the input, give bit-identical arrays
    slab = fcc111("Pt", (3, 3, 4), vacuum=6.0)
    slab.rattle(0.05, seed=14)
    a = neighbour_list(slab.positions, slab.cell.array, slab.pbc, 6.0)
    b = neighbour_list(slab.positions.copy(), slab.cell.array.copy(), slab.pbc.copy(), 6.0)
    for x, y in zip((a.first, a.second, a.vectors, a.offset), (b.first, b.second, b.vectors, b.offset)):
        assert x.tobytes() == y.tobytes()


# -- mixed and no periodicity -----------------------------------------------------

def test_slab_periodic_in_xy_only():
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "H", 1.5, "fcc")
    slab.rattle(0.03, seed=4)
    assert tuple(slab.pbc) == (True, True, False)
    nl = assert_same_as_ase(slab, 6.0)
    # no z-images: every vector's z component equals the plain difference
    dz = slab.positions[nl.second, 2] - slab.positions[nl.first, 2]
    np.testing.assert_allclose(nl.vectors[:, 2], dz, atol=1e-9)


def test_slab_with_zero_third_vector_and_atoms_beyond_it():
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "H", 1.5, "fcc")
    slab.rattle(0.03, seed=5)
    slab.cell[2] = 0.0                 # no third lattice vector at all
    slab.positions[:, 2] -= 10.0       # everything at negative z
    slab.pbc = (True, True, False)
    assert_same_as_ase(slab, 5.0)


def test_wire_periodic_along_x_only():
    atoms = si64(seed=6)
    atoms.pbc = (True, False, False)
    assert_same_as_ase(atoms, 5.0)


def test_skewed_cell_periodic_in_x_and_z_only():
    # the non-periodic direction has a real, non-orthogonal cell vector, and atoms
    # lie far outside the cell along it
    atoms = triclinic(n=20, seed=17)
    atoms.pbc = (True, False, True)
    atoms.positions[:6] += 2.5 * atoms.cell.array[1]
    atoms.positions[6:9] -= 1.5 * atoms.cell.array[1]
    assert_same_as_ase(atoms, 5.0)


def test_wire_with_only_one_cell_vector():
    atoms = Atoms("Si4", positions=[[0.1, 0, 0], [2.3, 0.4, 0.1], [1.2, 2.0, -0.3], [3.0, -1.9, 0.5]],
                  cell=[[4.1, 0, 0], [0, 0, 0], [0, 0, 0]], pbc=(True, False, False))
    assert_same_as_ase(atoms, 6.0)


def test_molecule_zero_cell():
    mol = molecule("C6H6")
    mol.rattle(0.01, seed=1)
    assert mol.cell.rank == 0 and not mol.pbc.any()
    assert_same_as_ase(mol, 3.0)


def test_cluster_with_a_far_away_atom():
    # a huge open box: the bin count along x must stay bounded and correct
    cluster = si64(seed=8)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster += Atoms("Si2", positions=[[1.0e4, 0.0, 0.0], [1.0e4 + 2.3, 0.1, 0.0]])
    nl = assert_same_as_ase(cluster, 4.0)
    far = nl.first >= 64
    assert set(nl.second[far]) == {64, 65}


def test_sparse_cluster_along_a_diagonal():
    # 30 close pairs strung along the body diagonal of a 58 000 A open box: the
    # bins along all three directions are capped together, not one at a time
    rng = np.random.default_rng(10)
    centres = np.sort(rng.random(30))[:, None] * 1e5 * np.ones(3) / np.sqrt(3)
    partners = centres + rng.normal(size=(30, 3))
    atoms = Atoms("Si60", positions=np.concatenate([centres, partners]))
    nl = assert_same_as_ase(atoms, 3.0)
    assert len(nl.first) >= 40


# -- atoms outside the cell ----------------------------------------------------

def test_atoms_outside_the_cell_periodic():
    atoms = si64(seed=9)
    rng = np.random.default_rng(9)
    # displace by whole lattice vectors, including negative ones: physically the
    # same crystal, positions far outside [0, 1)
    shifts = rng.integers(-3, 4, size=(len(atoms), 3))
    atoms.positions += shifts @ atoms.cell.array
    atoms.positions[0] = [-0.4, -0.3, -0.2]  # plain negative coordinates
    nl = assert_same_as_ase(atoms, 5.5)
    # same (i, j, distance) multiset as the wrapped structure
    wrapped = atoms.copy()
    wrapped.wrap()
    nlw = neighbour_list(wrapped.positions, wrapped.cell.array, wrapped.pbc, 5.5)
    a = sorted(zip(nl.first, nl.second, np.round(nl.distances, 8)))
    b = sorted(zip(nlw.first, nlw.second, np.round(nlw.distances, 8)))
    assert a == b


def test_atoms_outside_triclinic_cell():
    atoms = triclinic(seed=13)
    atoms.positions += np.array([-2, 1, -1]) @ atoms.cell.array
    atoms.positions[:5] -= 3.0 * atoms.cell.array[2]
    assert_same_as_ase(atoms, 5.0)


def test_no_pairs_and_no_atoms():
    lonely = Atoms("Si2", positions=[[0, 0, 0], [10, 0, 0]])
    nl = neighbour_list(lonely.positions, lonely.cell.array, lonely.pbc, 3.0)
    assert len(nl.first) == 0
    np.testing.assert_array_equal(nl.offset, [0, 0, 0])
    empty = neighbour_list(np.zeros((0, 3)), np.eye(3) * 5, True, 3.0)
    assert len(empty.first) == 0 and list(empty.offset) == [0]


def test_capacity_retry_dense_system():
    # far more than 64 neighbours per atom: the binding must grow its buffer
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.rattle(0.02, seed=3)
    nl = assert_same_as_ase(atoms, 9.0)
    assert len(nl.first) > 64 * len(atoms)


# -- errors --------------------------------------------------------------------

@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_cutoff(cutoff):
    atoms = si64()
    with pytest.raises(ValueError, match="cutoff"):
        neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_position(bad):
    atoms = si64()
    pos = atoms.positions.copy()
    pos[5, 1] = bad
    with pytest.raises(ValueError, match=r"atom 5 .*not finite"):
        neighbour_list(pos, atoms.cell.array, atoms.pbc, 4.0)


def test_zero_periodic_cell_vector():
    atoms = si64()
    cell = atoms.cell.array.copy()
    cell[1] = 0.0
    with pytest.raises(ValueError, match="cell"):
        neighbour_list(atoms.positions, cell, True, 4.0)


def test_linearly_dependent_periodic_cell():
    cell = np.array([[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]])
    with pytest.raises(ValueError, match="(singular|linearly dependent)"):
        neighbour_list(np.zeros((1, 3)), cell, True, 3.0)


def test_bad_position_shape():
    with pytest.raises(ValueError, match="shape"):
        neighbour_list(np.zeros((4, 2)), np.eye(3), True, 3.0)
