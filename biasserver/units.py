"""Unit conversions between i-PI's atomic units and ASE's eV / angstrom.

This module is the single place where the project converts units. i-PI speaks
bohr, hartree and hartree/bohr on the wire; everything inside the bias server
(symmetry functions, hills, recorder) is in angstrom, eV and eV/angstrom, as ASE
is. The constants are ASE's (CODATA 2014 in ase.units), so a round trip through
the server agrees with what an ASE user computes.
"""
from __future__ import annotations

import numpy as np
from ase import units as _ase_units

#: One bohr in angstrom.
BOHR: float = float(_ase_units.Bohr)
#: One hartree in eV.
HARTREE: float = float(_ase_units.Hartree)
#: One hartree/bohr in eV/angstrom.
HARTREE_PER_BOHR: float = HARTREE / BOHR
#: Boltzmann constant in eV/K.
KB: float = float(_ase_units.kB)


def length_to_angstrom(x_bohr: np.ndarray | float) -> np.ndarray | float:
    """Lengths (positions, cell vectors) from bohr to angstrom."""
    return x_bohr * BOHR


def length_to_bohr(x_angstrom: np.ndarray | float) -> np.ndarray | float:
    """Lengths from angstrom to bohr."""
    return x_angstrom / BOHR


def energy_to_ev(e_hartree: np.ndarray | float) -> np.ndarray | float:
    """Energies (and virials, which are energies) from hartree to eV."""
    return e_hartree * HARTREE


def energy_to_hartree(e_ev: np.ndarray | float) -> np.ndarray | float:
    """Energies (and virials) from eV to hartree."""
    return e_ev / HARTREE


def force_to_ev_per_angstrom(f_atomic: np.ndarray) -> np.ndarray:
    """Forces from hartree/bohr to eV/angstrom."""
    return f_atomic * HARTREE_PER_BOHR


def force_to_atomic(f_ev_a: np.ndarray) -> np.ndarray:
    """Forces from eV/angstrom to hartree/bohr."""
    return f_ev_a / HARTREE_PER_BOHR
