"""GMetaDCalculator: G-metaD inside plain ASE dynamics."""
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
from ase import units

from biasserver.bias import GMetaDBias
from biasserver.calculator import GMetaDCalculator
from biasserver.symmetry import SymmetryFunctions


def make(stride=2):
    atoms = bulk("Cu", "fcc", 3.6, cubic=True) * (2, 2, 1)
    atoms.rattle(0.05, seed=3)
    bias = GMetaDBias(SymmetryFunctions.default(["Cu"], cutoff=4.0), height=0.01, width=0.3,
                      stride=stride, species={"Cu": 1.0})
    return atoms, bias


def test_md_deposits_and_results_are_reference_plus_bias():
    atoms, bias = make()
    atoms.calc = GMetaDCalculator(EMT(), bias)
    VelocityVerlet(atoms, 1.0 * units.fs).run(6)
    assert bias.n_hills == 3 * len(atoms)            # steps 2, 4, 6
    calc = atoms.calc
    reference = atoms.copy()
    reference.calc = EMT()
    assert calc.results["reference_energy"] == pytest.approx(reference.get_potential_energy())
    assert calc.results["energy"] == pytest.approx(calc.results["reference_energy"] + calc.results["bias_energy"])
    assert calc.results["bias_energy"] > 0
    # a new structure is MD step 7: no deposition, so the bias now is the bias then
    atoms.rattle(0.02, seed=5)
    forces = atoms.get_forces()
    assert bias.n_hills == 3 * len(atoms) and bias.step_count == 8
    reference = atoms.copy()
    reference.calc = EMT()
    _, bias_forces, _ = bias.energy_forces(atoms)
    np.testing.assert_allclose(forces, reference.get_forces() + bias_forces, atol=1e-10)


def test_stress_is_the_strain_derivative_of_the_total_energy():
    atoms, bias = make(stride=1)
    bias.deposit(atoms)
    atoms.rattle(0.03, seed=8)
    atoms.calc = GMetaDCalculator(EMT(), bias)
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    h = 1e-5
    for a, b in [(0, 0), (1, 2), (2, 2)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * h
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            ref = strained.copy()
            ref.calc = EMT()
            energies.append(ref.get_potential_energy() + bias.energy_forces(strained)[0])
        fd = (energies[0] - energies[1]) / (2 * h) / volume / (1 if a == b else 2)
        assert fd == pytest.approx(stress[a, b], rel=1e-5, abs=1e-9)
