"""The covariance convention ``jacobian: folded | images`` of adaptive hills.

``images`` must reproduce the hills of the method's original LAMMPS code, whose
Jacobian J = dG_i/dR has one column block per atom it holds: the local centre i
and every neighbour within the cutoff, each periodic image (a ghost atom, the
centre's own images included) a separate atom. The reference below builds that
ghost-atom list explicitly, evaluates G_i from the definitions in plain numpy and
differentiates it by central finite differences, moving every image position on
its own; S = sigma^2 J J^T. ``folded`` (the physical Jacobian) is the same J with
the columns of one atom's images summed.
"""
import json
import itertools
import os
import textwrap

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from biasserver.bias import GMetaDBias
from biasserver.config import ConfigError, load
from biasserver.symmetry import SymmetryFunctions
from test_bias import strained

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
CUTOFF = 6.0
WIDTH = 0.8
REG = 1e-4


# -- the independent reference ---------------------------------------------------
def ghost_atoms(atoms, centre, cutoff):
    """Positions and atom indices of every image within ``cutoff`` of atom ``centre``
    (the centre's own unshifted position excluded), as a LAMMPS ghost-atom list."""
    cell = atoms.cell.array
    ranges = []
    for d in range(3):
        if atoms.pbc[d]:
            normal = np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])
            spacing = abs(np.linalg.det(cell)) / np.linalg.norm(normal)
            n = int(np.ceil(cutoff / spacing)) + 1
            ranges.append(range(-n, n + 1))
        else:
            ranges.append(range(1))
    positions, owners = [], []
    origin = atoms.positions[centre]
    for shift in itertools.product(*ranges):
        moved = atoms.positions + np.asarray(shift, dtype=float) @ cell
        dist = np.linalg.norm(moved - origin, axis=1)
        for j in np.flatnonzero(dist < cutoff):
            if j == centre and shift == (0, 0, 0):
                continue
            positions.append(moved[j])
            owners.append(j)
    return np.array(positions), np.array(owners)


def cutoff_function(r, rc):
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)


def reference_values(centre_position, positions, kinds, table):
    """G of a centre at ``centre_position`` with neighbours at ``positions`` (element
    indices ``kinds``), straight from the definitions (design.md section 3)."""
    d = positions - centre_position
    r = np.linalg.norm(d, axis=1)
    cos = (d @ d.T) / np.outer(r, r)
    r_jk = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    upper = np.triu(np.ones((len(r), len(r)), dtype=bool), k=1)      # j < k
    out = []
    for kind, e1, e2, rc, c1, c2, c3 in table:
        fc = cutoff_function(r, rc)
        if kind == 2:
            out.append(np.sum((kinds == e1) * np.exp(-c1 * (r - c2) ** 2) * fc))
            continue
        eta, zeta, lam = c1, c2, c3
        pair = ((kinds[:, None] == e1) & (kinds[None] == e2)) | ((kinds[:, None] == e2) & (kinds[None] == e1))
        radial = r[:, None] ** 2 + r[None] ** 2
        term = (1.0 + lam * cos) ** zeta * np.outer(fc, fc)
        if kind == 4:
            term = term * np.exp(-eta * (radial + r_jk ** 2)) * cutoff_function(r_jk, rc)
        else:
            term = term * np.exp(-eta * radial)
        out.append(2.0 ** (1.0 - zeta) * np.sum(term[pair & upper]))
    return np.array(out)


def reference_jacobian(atoms, centre, sf, h=1e-4):
    """(owners (M,), J (F, M + 1, 3)): column 0 is the centre with its ghosts fixed,
    column m + 1 the ghost/local neighbour m, by central differences."""
    positions, owners = ghost_atoms(atoms, centre, sf.cutoff)
    kinds = sf.species(atoms)[owners]
    table = sf.tables[sf.elements[sf.species(atoms)[centre]]]
    base = np.vstack([atoms.positions[centre], positions])
    jac = np.zeros((len(table), len(base), 3))
    for m in range(len(base)):
        for k in range(3):
            g = []
            for step in (h, -h):
                moved = base.copy()
                moved[m, k] += step
                g.append(reference_values(moved[0], moved[1:], kinds, table))
            jac[:, m, k] = (g[0] - g[1]) / (2 * h)
    return owners, jac


def fold(owners, centre, jac):
    """The physical Jacobian: the columns of every image of one atom summed."""
    atoms = np.concatenate([[centre], owners])
    folded = np.zeros((jac.shape[0], atoms.max() + 1, 3))
    np.add.at(folded, (slice(None), atoms), jac)
    return folded


def regularised(cov):
    """S + reg * lambda_max(S) * I, the covariance of an adaptive hill."""
    return cov + REG * np.linalg.eigvalsh(cov)[-1] * np.eye(len(cov))


def hill_covariances(atoms, sf, species, jacobian):
    """element -> (n_e, D, D) covariance of the hill each biased atom deposits."""
    bias = GMetaDBias(sf, height=0.01, width=WIDTH, stride=1, species=species,
                      regularization=REG, jacobian=jacobian)
    bias.deposit(atoms)
    return {e: np.linalg.inv(bias.hills[e].metrics) for e, c in species.items() if c > 0}


# -- structures -------------------------------------------------------------------
def silicon(repeat, seed=0):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.06, seed=seed)
    return atoms


def pt111_h(seed=0):
    """The Pt(111)-H example: a 3 x 3 cell of 8.3 A, narrower than 2 Rc = 12 A."""
    atoms = read(os.path.join(EXAMPLES, "pt111-h", "init.xyz"))
    atoms.rattle(0.05, seed=seed)
    return atoms


def si_with_g5():
    """Si G2 (with a shifted one), G4 and G5 functions."""
    rows = [[2, 0, -1, CUTOFF, 0.035711, 0.0, 0.0], [2, 0, -1, CUTOFF, 0.5, 2.3, 0.0],
            [2, 0, -1, 4.5, 1.428426, 0.0, 0.0]]
    rows += [[4, 0, 0, CUTOFF, eta, zeta, lam] for eta, zeta, lam in
             [(0.000357, 1.0, -1.0), (0.028569, 2.0, 1.0), (0.089277, 4.0, -1.0)]]
    rows += [[5, 0, 0, CUTOFF, eta, zeta, lam] for eta, zeta, lam in
             [(0.000357, 1.0, 1.0), (0.028569, 4.0, -1.0)]]
    return SymmetryFunctions(["Si"], {"Si": rows})


CASES = {
    "Si8": (lambda: silicon(1), lambda: SymmetryFunctions.default(["Si"], CUTOFF), {"Si": 1.0}, [0, 3, 6]),
    "Si8-G5": (lambda: silicon(1, seed=1), si_with_g5, {"Si": 1.0}, [1, 5]),
    "Si64": (lambda: silicon(2), lambda: SymmetryFunctions.default(["Si"], CUTOFF), {"Si": 1.0}, [0, 37]),
    # all 37 atoms deposit: the H centre (the biased atom of the example) and two Pt
    # centres, one in the top layer next to H, one in the bottom layer
    "Pt111-H": (pt111_h, lambda: SymmetryFunctions.default(["Pt", "H"], CUTOFF),
                {"Pt": 1.0, "H": 1.0}, [36, 30, 2]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_images_reproduces_the_ghost_atom_covariance(case):
    make_atoms, make_sf, species, centres = CASES[case]
    atoms, sf = make_atoms(), make_sf()
    assert min(atoms.cell.lengths()[atoms.pbc]) < 2 * sf.cutoff     # a short cell
    covariances = {j: hill_covariances(atoms, sf, species, j) for j in ("folded", "images")}
    kinds = sf.species(atoms)
    for centre in centres:
        element = sf.elements[kinds[centre]]
        index = int(np.flatnonzero(np.flatnonzero(kinds == kinds[centre]) == centre)[0])
        owners, jac = reference_jacobian(atoms, centre, sf)
        assert len(owners) > len(set(owners))       # some atom has several images
        expected = {}
        for name, j in (("images", jac), ("folded", fold(owners, centre, jac))):
            j = j.reshape(len(j), -1)
            expected[name] = regularised(WIDTH**2 * j @ j.T)
        scale = np.abs(expected["images"]).max()
        for name in ("images", "folded"):
            got = covariances[name][element][index]
            np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-6 * scale,
                                       err_msg=f"{case} atom {centre} {name}")
        # the two conventions differ by far more than the tolerance here
        assert np.abs(expected["images"] - expected["folded"]).max() > 1e-3 * scale


def test_jacobian_images_columns():
    """Descriptors.jacobian(images=True) has the centre and one block per neighbour-list
    entry; summing the blocks of each atom gives the folded Jacobian."""
    atoms = silicon(1)
    sf = SymmetryFunctions.default(["Si"], CUTOFF)
    desc = sf.compute(atoms)
    for c in range(len(atoms)):
        owners, jac = desc.jacobian("Si", c, images=True)
        folded_atoms, folded = desc.jacobian("Si", c)
        assert owners[0] == c and len(owners) == desc.neighbours.offset[c + 1] - desc.neighbours.offset[c] + 1
        summed = np.zeros((jac.shape[0], len(atoms), 3))
        np.add.at(summed, (slice(None), owners), jac)
        scale = np.abs(jac).max()
        np.testing.assert_allclose(summed[:, folded_atoms], folded, rtol=0, atol=1e-12 * scale)
        # G does not change when the whole environment moves rigidly
        np.testing.assert_allclose(jac.sum(axis=1), 0.0, rtol=0, atol=1e-12 * scale)


def after_deposition(atoms, sf, species, jacobian, probe, width=1.0, height=0.001):
    bias = GMetaDBias(sf, height=height, width=width, stride=1, species=species, jacobian=jacobian)
    bias.deposit(atoms)
    return bias, bias.energy_forces(probe)


def displaced(atoms, amplitude, seed):
    out = atoms.copy()
    out.positions += amplitude * np.random.default_rng(seed).standard_normal(out.positions.shape)
    return out


def test_conventions_agree_in_a_cell_wider_than_twice_the_cutoff():
    atoms = silicon(3)                                  # 16.3 A > 2 Rc = 12 A
    sf = SymmetryFunctions.default(["Si"], CUTOFF)
    folded = hill_covariances(atoms, sf, {"Si": 1.0}, "folded")["Si"]
    images = hill_covariances(atoms, sf, {"Si": 1.0}, "images")["Si"]
    np.testing.assert_allclose(images, folded, rtol=0, atol=1e-9 * np.abs(folded).max())
    probe = displaced(atoms, 0.05, seed=1)
    (_, (e_f, f_f, v_f)), (_, (e_i, f_i, v_i)) = (
        after_deposition(atoms, sf, {"Si": 1.0}, j, probe) for j in ("folded", "images"))
    assert e_i == pytest.approx(e_f, rel=1e-10)
    np.testing.assert_allclose(f_i, f_f, rtol=0, atol=1e-9 * np.abs(f_f).max())
    np.testing.assert_allclose(v_i, v_f, rtol=0, atol=1e-9 * np.abs(v_f).max())


def test_images_covariance_does_not_depend_on_the_supercell():
    """The same local environment (perfect diamond Si) in Si8 and in Si216: with
    ``images`` Si8 deposits the hills of Si216; folding depends on the cell."""
    sf = SymmetryFunctions.default(["Si"], CUTOFF)
    small = bulk("Si", "diamond", 5.43, cubic=True)
    large = hill_covariances(small.repeat(3), sf, {"Si": 1.0}, "folded")["Si"]
    images = hill_covariances(small, sf, {"Si": 1.0}, "images")["Si"]
    folded = hill_covariances(small, sf, {"Si": 1.0}, "folded")["Si"]
    scale = np.abs(large).max()
    for atom in range(len(small)):
        np.testing.assert_allclose(images[atom], large[atom], rtol=0, atol=1e-9 * scale)
    assert np.abs(folded[0] - large[0]).max() > 0.1 * scale


@pytest.mark.parametrize("case", ["Si64", "Pt111-H"])
def test_conventions_differ_in_short_cells(case):
    """Same deposition, bias felt 0.05 A away: a visible difference in energy and forces."""
    if case == "Si64":
        atoms, sf, species = silicon(2), SymmetryFunctions.default(["Si"], CUTOFF), {"Si": 1.0}
    else:
        atoms, sf, species = pt111_h(), SymmetryFunctions.default(["Pt", "H"], CUTOFF), {"H": 1.0}
    probe = displaced(atoms, 0.05, seed=1)
    (_, (e_f, f_f, _)), (_, (e_i, f_i, _)) = (
        after_deposition(atoms, sf, species, j, probe) for j in ("folded", "images"))
    assert e_f > 0 and e_i > 0
    assert abs(e_i - e_f) > 1e-4 * e_f
    assert np.abs(f_i - f_f).max() > 0.01 * np.abs(f_f).max()


@pytest.mark.parametrize("case", ["Si8", "Pt111-H"])
def test_images_forces_and_virial_are_derivatives_of_the_energy(case):
    if case == "Si8":
        atoms, sf, species = silicon(1), SymmetryFunctions.default(["Si"], CUTOFF), {"Si": 1.0}
    else:
        atoms, sf, species = pt111_h(), SymmetryFunctions.default(["Pt", "H"], CUTOFF), {"H": 1.0}
    bias = GMetaDBias(sf, height=0.01, width=0.5, stride=1, species=species, jacobian="images")
    bias.deposit(atoms)
    bias.deposit(displaced(atoms, 0.03, seed=2))
    probe = displaced(atoms, 0.03, seed=3)
    energy, forces, virial = bias.energy_forces(probe)
    assert energy > 0
    h = 1e-5
    force_scale = np.abs(forces).max()
    rng = np.random.default_rng(0)
    biased = np.flatnonzero(np.array(probe.get_chemical_symbols()) == list(species)[0])
    picks = [(int(a), k) for a in biased[:2] for k in range(3)]
    picks += [divmod(int(f), 3) for f in rng.choice(3 * len(probe), size=8, replace=False)]
    for a, k in picks:
        plus, minus = probe.copy(), probe.copy()
        plus.positions[a, k] += h
        minus.positions[a, k] -= h
        fd = -(bias.energy_forces(plus)[0] - bias.energy_forces(minus)[0]) / (2 * h)
        assert fd == pytest.approx(forces[a, k], rel=1e-5, abs=1e-6 * force_scale), (a, k)
    virial_scale = np.abs(virial).max()
    for a in range(3):
        for b in range(3):
            if not (probe.pbc[a] and probe.pbc[b]):
                continue
            eps = np.zeros((3, 3))
            eps[a, b] = h
            fd = -(bias.energy_forces(strained(probe, eps))[0]
                   - bias.energy_forces(strained(probe, -eps))[0]) / (2 * h)
            assert fd == pytest.approx(virial[a, b], rel=1e-5, abs=1e-6 * virial_scale), (a, b)


def drop_jacobian_key(path):
    """Make a hills file look written before the option existed: no "jacobian" key."""
    lines = path.read_text().splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.startswith("#! bias "):
            params = json.loads(line[len("#! bias "):])
            del params["jacobian"]
            lines[n] = f"#! bias {json.dumps(params)}\n"
    path.write_text("".join(lines))


def test_hills_file_stores_and_restores_the_convention(tmp_path):
    atoms = silicon(1)
    sf = SymmetryFunctions.default(["Si"], CUTOFF)
    live = GMetaDBias(sf, height=0.01, width=0.5, stride=1, species={"Si": 1.0}, jacobian="images")
    live.deposit(atoms)
    path = tmp_path / "HILLS"
    live.save(path)
    loaded = GMetaDBias.load(path)
    assert loaded.jacobian == "images" and loaded.parameters() == live.parameters()
    probe = displaced(atoms, 0.05, seed=4)
    assert loaded.energy_forces(probe)[0] == live.energy_forces(probe)[0]
    # later hills of the loaded bias are those of the live one
    live.deposit(probe)
    loaded.deposit(probe)
    np.testing.assert_array_equal(loaded.hills["Si"].metrics, live.hills["Si"].metrics)

    # a file written before the option existed has no "jacobian" key: folded
    old = tmp_path / "HILLS.old"
    old.write_text(path.read_text())
    drop_jacobian_key(old)
    assert GMetaDBias.load(old).jacobian == "folded"


def test_bad_convention_is_refused(tmp_path):
    sf = SymmetryFunctions.default(["Si"], CUTOFF)
    with pytest.raises(ValueError, match="jacobian must be one of"):
        GMetaDBias(sf, 0.01, 0.5, 1, {"Si": 1.0}, jacobian="ghosts")
    write(tmp_path / "init.xyz", bulk("Si", "diamond", 5.43, cubic=True), format="extxyz")
    config = textwrap.dedent("""\
        structure: init.xyz
        bias:
          species: {Si: 1.0}
          jacobian: %s
        recorder:
          path: null
        """)
    path = tmp_path / "gmetad.yaml"
    path.write_text(config % "ghosts")
    with pytest.raises(ConfigError, match=r"gmetad.yaml: 'bias.jacobian' must be one of .*'ghosts'"):
        load(path)
    path.write_text(config % "images")
    bias = load(path).make_bias()
    assert bias.jacobian == "images"
    bias.deposit(bulk("Si", "diamond", 5.43, cubic=True))
    bias.close()
    # continuing these hills with the other convention is refused, naming the key
    path.write_text(config % "folded")
    with pytest.raises(ConfigError, match="bias.jacobian is 'images' there, 'folded' here"):
        load(path)
    # a file from before the option (no "jacobian" key) holds folded hills
    drop_jacobian_key(tmp_path / "HILLS")
    bias = load(path).make_bias()
    assert bias.jacobian == "folded" and bias.n_hills == 8
    bias.close()
    path.write_text(config % "images")
    with pytest.raises(ConfigError, match="bias.jacobian is 'folded' there, 'images' here"):
        load(path)
