"""G-metaD inside ASE: an ASE calculator that adds the bias to a reference calculator.

For standalone runs and tests without i-PI: any ASE dynamics driving a
:class:`GMetaDCalculator` runs G-metaD. Results follow ASE's conventions (eV,
eV/A, stress in eV/A^3); ``results['bias_energy']`` holds the bias part and
``results['reference_energy']`` the unbiased energy that a training set records.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .bias import GMetaDBias


class GMetaDCalculator(Calculator):
    """reference + G-metaD bias. Every new structure is one MD step of the bias
    (``bias.step``), so hills are deposited as the dynamics advances."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, reference: Calculator, bias: GMetaDBias, **kwargs):
        super().__init__(**kwargs)
        self.reference = reference
        self.bias = bias

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        ref_atoms = self.atoms.copy()
        ref_atoms.calc = self.reference
        ref_energy = ref_atoms.get_potential_energy()
        ref_forces = ref_atoms.get_forces()
        bias_energy, bias_forces, bias_virial = self.bias.step(self.atoms)
        self.results = {
            "energy": ref_energy + bias_energy,
            "free_energy": ref_energy + bias_energy,
            "forces": ref_forces + bias_forces,
            "bias_energy": bias_energy,
            "reference_energy": ref_energy,
            "reference_forces": ref_forces,
        }
        if "stress" in properties and self.atoms.pbc.all():
            volume = self.atoms.get_volume()
            stress = ref_atoms.get_stress(voigt=False) - bias_virial / volume
            self.results["stress"] = stress.reshape(9)[[0, 4, 8, 5, 2, 1]]
