"""The C contractions of the derivative blocks (ckernels/contractions.c): forces and
virial of E(G), and J J^T per centre, against plain numpy references, on bulk, a
cell small enough for several images of one atom, two elements, a slab and atoms
without neighbours; deterministic run to run and for 1 and 2 OpenMP threads."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from biasserver import kernels
from biasserver.symmetry import Descriptors, SymmetryFunctions
from test_symmetry import si64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- structures ------------------------------------------------------------------

def small_cell() -> Atoms:
    """2 Si in the fcc primitive cell (|a| = 3.84 A < Rc): every atom, the centre
    included, has several images within the cutoff."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    atoms.wrap()
    return atoms


def sige() -> Atoms:
    atoms = si64()
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[np.random.default_rng(2).permutation(64)[:24]] = "Ge"
    atoms.set_chemical_symbols(symbols)
    return atoms


def slab() -> Atoms:
    """Si64 cut open along z (periodic in x and y only)."""
    atoms = si64()
    atoms.center(vacuum=6.0, axis=2)
    atoms.pbc = (True, True, False)
    return atoms


def isolated() -> Atoms:
    """A Si dimer (atoms 0 and 2) and, 20 A away, atom 1 with no neighbour at all (no cell)."""
    return Atoms("Si3", positions=[[0, 0, 0], [20.0, 0.0, 0.0], [2.3, 0.1, 0.2]], pbc=False)


CASES = {
    "si64": (si64, ("Si",)),
    "small_cell": (small_cell, ("Si",)),
    "sige": (sige, ("Si", "Ge")),
    "slab": (slab, ("Si",)),
    "isolated": (isolated, ("Si",)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, elements = CASES[request.param]
    atoms = build()
    desc = SymmetryFunctions.default(list(elements)).compute(atoms)
    rng = np.random.default_rng(7)
    grads = {e: rng.normal(size=desc.values[e].shape) for e in elements}
    return request.param, desc, grads


# -- numpy references ----------------------------------------------------------------

def forces_virial_reference(desc: Descriptors, grads) -> tuple[np.ndarray, np.ndarray]:
    """w_p = dE/dG_c . dG_c/dR_p; forces[i] += w, forces[j] -= w, virial -= w^T R."""
    forces, virial = np.zeros((desc.n_atoms, 3)), np.zeros((3, 3))
    nl = desc.neighbours
    for e, grad in grads.items():
        pairs = desc.pair_index[e]
        w = np.einsum("pf,pfk->pk", grad[desc.pair_centre[e]], desc.derivatives[e])
        np.add.at(forces, nl.first[pairs], w)
        np.subtract.at(forces, nl.second[pairs], w)
        virial -= w.T @ nl.vectors[pairs]
    return forces, virial


def jacobian_products_reference(desc: Descriptors, element: str, images: bool) -> np.ndarray:
    """J J^T of every centre from the dense Jacobian of Descriptors.jacobian."""
    n, n_funcs = desc.values[element].shape
    out = np.zeros((n, n_funcs, n_funcs))
    for c in range(n):
        _, jac = desc.jacobian(element, c, images=images)
        jac = jac.reshape(n_funcs, -1)
        out[c] = jac @ jac.T
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal within 1e-12 of the largest entry (exactly, when the reference is zero)."""
    assert actual.shape == expected.shape, what
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * scale, err_msg=what)


# -- forces and virial -------------------------------------------------------------------

def test_forces_virial_against_numpy(case):
    name, desc, grads = case
    forces, virial = desc.forces_virial(grads)
    ref_forces, ref_virial = forces_virial_reference(desc, grads)
    assert_close(forces, ref_forces, f"{name}: forces")
    assert_close(virial, ref_virial, f"{name}: virial")
    if name == "isolated":
        assert np.all(forces[1] == 0) and np.abs(forces[[0, 2]]).max() > 0
    else:
        assert np.abs(forces).max() > 0 and np.abs(virial).max() > 0


def test_forces_virial_bit_identical_on_repeat(case):
    _, desc, grads = case
    first = desc.forces_virial(grads)
    again = desc.forces_virial(grads)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_forces_virial_skips_elements_without_blocks():
    atoms = sige()
    sf = SymmetryFunctions.default(["Si", "Ge"])
    desc = sf.compute(atoms, elements=["Si"])
    grads = {"Si": np.ones((40, 70)), "Ge": np.ones((0, 70))}
    forces, virial = desc.forces_virial(grads)
    ref_forces, ref_virial = forces_virial_reference(desc, {"Si": grads["Si"]})
    assert_close(forces, ref_forces, "forces")
    assert_close(virial, ref_virial, "virial")


# -- J J^T -------------------------------------------------------------------------------

@pytest.mark.parametrize("images", [False, True])
def test_jacobian_products_against_dense_jacobian(case, images):
    name, desc, _ = case
    for e in desc.elements:
        jjt = desc.jacobian_products(e, images=images)
        assert_close(jjt, jacobian_products_reference(desc, e, images), f"{name} {e} images={images}")
        np.testing.assert_array_equal(jjt, jjt.transpose(0, 2, 1))
        np.testing.assert_array_equal(jjt, desc.jacobian_products(e, images=images))
    if name == "isolated":
        assert np.all(desc.jacobian_products("Si", images=images)[1] == 0)


def test_image_conventions_differ_in_a_small_cell():
    desc = SymmetryFunctions.default(["Si"]).compute(small_cell())
    folded, unfolded = desc.jacobian_products("Si"), desc.jacobian_products("Si", images=True)
    assert np.abs(folded - unfolded).max() > 1e-3 * np.abs(unfolded).max()


def test_jacobian_products_of_an_element_without_centres():
    desc = SymmetryFunctions.default(["Si", "Ge"]).compute(si64())
    for images in (False, True):
        assert desc.jacobian_products("Ge", images=images).shape == (0, 70, 70)


def test_bindings_reject_inconsistent_offsets():
    desc = SymmetryFunctions.default(["Si"]).compute(small_cell())
    deriv = desc.derivatives["Si"]
    bad = np.array([0, 3, len(deriv) - 1])   # does not end at the last block
    with pytest.raises(ValueError, match="block_offset"):
        kernels.jacobian_products(bad, deriv, True)
    decreasing = np.array([0, len(deriv), len(deriv) - 1, len(deriv)])
    with pytest.raises(ValueError, match="invalid argument"):
        kernels.jacobian_products(decreasing, deriv, True)


# -- threads --------------------------------------------------------------------------------

DIGEST = """
import hashlib, sys, numpy as np
sys.path.insert(0, "tests")
from test_contractions import sige, small_cell
from biasserver.symmetry import SymmetryFunctions
h = hashlib.sha256()
for atoms, elements in ((sige(), ["Si", "Ge"]), (small_cell(), ["Si"])):
    desc = SymmetryFunctions.default(elements).compute(atoms)
    rng = np.random.default_rng(3)
    for part in desc.forces_virial({e: rng.normal(size=desc.values[e].shape) for e in elements}):
        h.update(part.tobytes())
    for e in elements:
        for images in (False, True):
            h.update(desc.jacobian_products(e, images=images).tobytes())
print(h.hexdigest())
"""


def test_same_bits_for_one_and_two_threads():
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        run = subprocess.run([sys.executable, "-c", DIGEST], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        digests.append(run.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
