"""Central finite differences of an energy function, the reference every derivative is checked against."""
from __future__ import annotations

from typing import Callable

import numpy as np
from ase import Atoms


def numerical_forces(energy: Callable[[Atoms], float], atoms: Atoms, step: float) -> np.ndarray:
    """-dE/dR (eV/A) by central differences of atomic displacements of ``step`` A."""
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, k] += sign * step
                e.append(energy(moved))
            forces[a, k] = -(e[0] - e[1]) / (2 * step)
    return forces


def numerical_virial(energy: Callable[[Atoms], float], atoms: Atoms, strain_step: float) -> np.ndarray:
    """-dE/d(strain) (eV) by central differences of homogeneous deformations of ``strain_step``."""
    virial = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.eye(3)
                eps[a, b] += sign * strain_step
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ eps, scale_atoms=True)
                e.append(energy(moved))
            virial[a, b] = -(e[0] - e[1]) / (2 * strain_step)
    return virial
