"""The benchmark's Stillinger-Weber engine in C (benchmarks/engines) against
matscipy's Stillinger-Weber, which it replaces in benchmarks/long_run.py, and
against finite differences of its own energy."""
import os
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, diamond111

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from engines.stillinger_weber import StillingerWeberC, matscipy_parameters  # noqa: E402
from finite_differences import numerical_forces, numerical_virial  # noqa: E402

from biasserver.kernels import neighbour_list  # noqa: E402


def matscipy_sw():
    from matscipy.calculators.manybody import Manybody
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import StillingerWeber
    return Manybody(**StillingerWeber(matscipy_parameters()))


def si64_rattled():
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)
    return atoms


def si64_dense():
    """Compressed by 10 % in length and rattled by 0.3 A: 8-13 neighbours per atom,
    the disordered states the long runs' bias drives Si64 into."""
    atoms = bulk("Si", "diamond", 5.431, cubic=True).repeat(2)
    atoms.set_cell(atoms.cell * 0.9, scale_atoms=True)
    atoms.rattle(0.3, seed=2)
    return atoms


def si8_small_cell():
    """Cubic cell of 5.431 A, shorter than twice the cutoff (2 x 3.77 A): an atom meets
    several periodic images of the same neighbour."""
    atoms = bulk("Si", "diamond", 5.431, cubic=True)
    atoms.rattle(0.15, seed=3)
    return atoms


def si_slab():
    """Si(111) slab, periodic in x and y, 8 A of vacuum on each side."""
    atoms = diamond111("Si", (2, 2, 4), a=5.431, vacuum=8.0)
    atoms.rattle(0.1, seed=4)
    return atoms


def sheared_triclinic():
    atoms = bulk("Si", "diamond", 5.431).repeat((3, 2, 2))
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.05, 0.0], [0.0, 0.97, -0.04], [0.02, 0.0, 1.03]]),
                   scale_atoms=True)
    atoms.rattle(0.1, seed=5)
    return atoms


CASES = {"si64_rattled": si64_rattled, "si64_dense": si64_dense, "si8_small_cell": si8_small_cell,
         "slab": si_slab, "triclinic": sheared_triclinic}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_matscipy(case):
    """Energy to 1e-9 eV, forces to 1e-8 eV/A, stress to 1e-9 eV/A^3 (absolute)."""
    atoms = CASES[case]()
    ours, theirs = atoms.copy(), atoms.copy()
    ours.calc, theirs.calc = StillingerWeberC(), matscipy_sw()
    assert abs(ours.get_potential_energy() - theirs.get_potential_energy()) < 1e-9
    assert ours.get_potential_energy() == ours.get_potential_energy(force_consistent=True)
    np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.get_stress(), theirs.get_stress(), rtol=0, atol=1e-9)
    # the cases exercise what they claim: dense frames with many neighbours, real forces
    assert np.abs(theirs.get_forces()).max() > 0.5
    if case == "si64_dense":
        nl = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, ours.calc.cutoff)
        assert np.diff(nl.offset).max() >= 10


def test_forces_and_stress_against_finite_differences():
    """Forces: central differences of 1e-4 A; virial: strains of 1e-5, on the dense
    frame, where all three-body terms are active. Tolerances: the O(h^2) error of
    the differences (forces up to ~20 eV/A here)."""
    atoms = si64_dense()
    calc = StillingerWeberC()

    def energy(a):
        a.calc = calc
        return a.get_potential_energy()

    atoms.calc = calc
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    reference = numerical_forces(energy, atoms.copy(), 1e-4)
    np.testing.assert_allclose(forces, reference, rtol=0, atol=1e-5 * max(1.0, np.abs(forces).max()))
    virial = numerical_virial(energy, atoms.copy(), 1e-5)
    np.testing.assert_allclose(-stress * atoms.get_volume(), virial, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(virial).max()))


def test_isolated_pair_and_triplet():
    """Closed forms, bonds of 2.35 A: a dimer, an equilateral triangle (three pairs,
    three angles of 60 degrees), and a dimer just beyond the cutoff a sigma."""
    par = matscipy_parameters()
    eps, sigma, a = par["epsilon"], par["sigma"], par["a"]
    r = 2.35
    dimer = Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], cell=[20, 20, 20], pbc=False)
    dimer.calc = StillingerWeberC()
    expected = par["A"] * eps * (par["B"] * (sigma / r) ** par["p"] - 1) * np.exp(sigma / (r - a * sigma))
    assert dimer.get_potential_energy() == pytest.approx(expected, abs=1e-12)
    tri = Atoms("Si3", positions=[[0, 0, 0], [r, 0, 0], [r / 2, r * np.sqrt(3) / 2, 0]],
                cell=[20, 20, 20], pbc=False)
    tri.calc = StillingerWeberC()
    angle = (0.5 + par["costheta0"]) ** 2   # cos 60 = 1/2
    three = 3 * par["lambda1"] * eps * angle * np.exp(2 * par["gamma"] * sigma / (r - a * sigma))
    assert tri.get_potential_energy() == pytest.approx(3 * expected + three, abs=1e-12)
    np.testing.assert_allclose(tri.get_forces().sum(axis=0), 0.0, rtol=0, atol=1e-12)
    # beyond the cutoff: nothing
    far = Atoms("Si2", positions=[[0, 0, 0], [a * sigma + 1e-6, 0, 0]], cell=[20, 20, 20], pbc=False)
    far.calc = StillingerWeberC()
    assert far.get_potential_energy() == 0.0
    np.testing.assert_array_equal(far.get_forces(), 0.0)
