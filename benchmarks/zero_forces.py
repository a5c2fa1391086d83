"""A force engine that costs nothing: zero energy and forces (benchmarks only)."""
import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class ZeroForces(Calculator):
    """E = 0, F = 0, stress = 0: isolates the cost of the socket chain."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}
