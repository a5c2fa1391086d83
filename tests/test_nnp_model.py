"""NNP model: forces and virial against finite differences, committees, files, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.calculator import PropertyNotImplementedError

from biasserver.symmetry import SymmetryFunctions
from finite_differences import numerical_forces, numerical_virial
from nnp import ModelError, NNPCalculator, NNPModel
from nnp.model import initial_layers, network_energy_gradient, standard_scaling

FD_STEP = 1e-5      # angstrom
STRAIN_STEP = 1e-6


def random_model(structures, symmetry: SymmetryFunctions, members: int = 1, hidden=(12, 9),
                 activation: str = "tanh", seed: int = 0) -> NNPModel:
    """A committee of random networks, standardised on the structures' own G."""
    rng = np.random.default_rng(seed)
    g = {e: np.concatenate([symmetry.values(s)[e] for s in structures]) for e in symmetry.elements}
    scaling = {e: standard_scaling(g[e]) for e in symmetry.elements}
    mean = {e: scaling[e][0] for e in symmetry.elements}
    std = {e: scaling[e][1] for e in symmetry.elements}
    e_ref = {e: -1.5 - k for k, e in enumerate(symmetry.elements)}
    nets = [{e: initial_layers(symmetry.size(e), hidden, rng) for e in symmetry.elements} for _ in range(members)]
    return NNPModel(symmetry, tuple(hidden), activation, mean, std, e_ref, nets, {"made_by": "test"})


def rattled(atoms, n=6, amplitude=0.15):
    """Copies of ``atoms`` rattled more strongly: a spread of environments to standardise on."""
    out = []
    for k in range(n):
        copy = atoms.copy()
        copy.rattle(amplitude, seed=100 + k)
        out.append(copy)
    return out


def si_cell():
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)  # 8 atoms; images within the 6 A cutoff
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(0.08, seed=4)
    return atoms


def pt_h_slab():
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0)   # pbc (True, True, False)
    add_adsorbate(slab, "H", 1.0, "fcc")
    add_adsorbate(slab, "H", 1.6, "ontop")
    slab.rattle(0.05, seed=2)
    return slab


@pytest.mark.parametrize("system", ["si-periodic", "pt-h-slab"])
def test_forces_and_virial_equal_finite_differences(system):
    atoms = si_cell() if system == "si-periodic" else pt_h_slab()
    elements = sorted(set(atoms.get_chemical_symbols()))
    sf = SymmetryFunctions.default(elements, cutoff=5.0 if system == "pt-h-slab" else 6.0)
    model = random_model(rattled(atoms), sf, members=2)
    pred = model.predict(atoms)
    assert np.abs(pred.forces).max() > 0.05      # a real test: forces are not trivially small
    num = numerical_forces(model.energy, atoms, FD_STEP)
    np.testing.assert_allclose(pred.forces, num, rtol=0, atol=2e-8 * np.abs(num).max())
    vir = numerical_virial(model.energy, atoms, STRAIN_STEP)
    np.testing.assert_allclose(pred.virial, vir, rtol=0, atol=2e-8 * np.abs(vir).max())
    # committee mean of members' energies; forces of each member are the mean's parts
    assert pred.energy == pytest.approx(pred.members.mean(), abs=1e-12 * abs(pred.energy))
    assert pred.energy_std > 0 and np.abs(pred.forces_std).max() > 0


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "silu", "softplus"])
def test_network_gradient_equals_finite_differences(activation):
    rng = np.random.default_rng(1)
    layers = initial_layers(5, (7, 4), rng)
    layers = [(w, rng.normal(0, 0.3, b.shape)) for w, b in layers]
    x = rng.normal(size=(6, 5))
    energy, grad = network_energy_gradient(layers, activation, x)
    num = np.zeros_like(x)
    for i in range(x.shape[0]):
        for f in range(x.shape[1]):
            dx = np.zeros_like(x)
            dx[i, f] = 1e-6
            num[i, f] = (network_energy_gradient(layers, activation, x + dx)[0][i]
                         - network_energy_gradient(layers, activation, x - dx)[0][i]) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=0, atol=1e-8 * np.abs(num).max())
    assert energy.shape == (6,)


def test_calculator_results_and_stress():
    atoms = si_cell()
    model = random_model([atoms], SymmetryFunctions.default(["Si"]), members=3)
    atoms.calc = NNPCalculator(model)
    pred = model.predict(atoms)
    assert atoms.get_potential_energy() == pred.energy
    np.testing.assert_array_equal(atoms.get_forces(), pred.forces)
    np.testing.assert_allclose(atoms.get_stress(voigt=False) * -atoms.get_volume(), pred.virial,
                               rtol=0, atol=1e-12 * np.abs(pred.virial).max())
    assert atoms.calc.results["energy_std"] == pred.energy_std > 0
    np.testing.assert_array_equal(atoms.calc.results["forces_std"], pred.forces_std)
    extras = atoms.calc.ipi_extras()
    assert extras["committee"] == 3 and extras["energy_std"] == pred.energy_std
    assert np.array(extras["forces_std"]).shape == (8, 3)
    slab = pt_h_slab()
    slab.calc = NNPCalculator(random_model([slab], SymmetryFunctions.default(["H", "Pt"], cutoff=5.0)))
    assert np.isfinite(slab.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        slab.get_stress()     # not periodic in z: no stress (the virial is in results)
    assert slab.calc.results["virial"].shape == (3, 3)
    assert slab.calc.ipi_extras() == {}    # single network: no spread to report


def test_save_load_bit_identical(tmp_path):
    slab = pt_h_slab()
    sf = SymmetryFunctions.default(["H", "Pt"], cutoff=5.0)
    model = random_model([slab], sf, members=2, activation="silu")
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = NNPModel.load(path)
    assert loaded.elements == ("H", "Pt") and loaded.n_members == 2 and loaded.hidden == (12, 9)
    assert loaded.symmetry.fingerprint() == sf.fingerprint()
    assert loaded.provenance == {"made_by": "test"}
    a, b = model.predict(slab), loaded.predict(slab)
    assert a.energy == b.energy and a.energy_std == b.energy_std
    np.testing.assert_array_equal(a.forces, b.forces)
    np.testing.assert_array_equal(a.forces_std, b.forces_std)
    np.testing.assert_array_equal(a.virial, b.virial)


def test_unknown_element_is_named(tmp_path):
    atoms = si_cell()
    model = random_model([atoms], SymmetryFunctions.default(["Si"]))
    model.save(tmp_path / "si.pt")
    atoms.symbols[5] = "Ge"
    with pytest.raises(ModelError, match=r"si\.pt knows the elements Si only; atom 5 is Ge"):
        NNPCalculator(str(tmp_path / "si.pt")).get_potential_energy(atoms)


def test_bad_model_files_are_named(tmp_path):
    with pytest.raises(ModelError, match="missing.pt: model file not found"):
        NNPModel.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model\n")
    with pytest.raises(ModelError, match="junk.pt: not a readable model file"):
        NNPModel.load(junk)
    import torch

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelError, match="other.pt: not a gmetad NNP model file"):
        NNPModel.load(other)


def test_mismatched_symmetry_functions_are_refused():
    atoms = si_cell()
    model = random_model([atoms], SymmetryFunctions.default(["Si"]))
    model.check_symmetry(SymmetryFunctions.default(["Si"]), "run.yaml")
    with pytest.raises(ModelError, match=r"run\.yaml: symmetry functions .* differ from those of model"):
        model.check_symmetry(SymmetryFunctions.default(["Si"], cutoff=5.5), "run.yaml")
