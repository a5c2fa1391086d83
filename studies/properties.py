"""Material-property building blocks shared by the studies, for any ASE calculator.

Relaxations with a fixed convergence criterion, surface and defect formation
energies from a cell's energy and the bulk energy per atom, and a climbing-image
NEB barrier. Every function works in ASE units: angstrom, eV, eV/A (forces),
eV/A^3 (stress); surface energies come out in eV/A^2.

The calculator is whatever the caller attached or passes: matscipy's
Stillinger-Weber, EMT, an NNP committee (its spread is ignored here). Relaxations
stop when the largest force (and, with a cell filter, the largest generalised
cell force) is below ``fmax``; a relaxation that does not get there within
``steps`` raises RuntimeError rather than returning an unconverged energy.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.mep import NEB
from ase.optimize import BFGS, FIRE, LBFGS

__all__ = [
    "relax_positions",
    "relax_cell",
    "surface_energy",
    "formation_energy",
    "cell_area",
    "neb_barrier",
]

_OPTIMIZERS = {"lbfgs": LBFGS, "bfgs": BFGS, "fire": FIRE}


def _optimizer(name: str):
    try:
        return _OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(sorted(_OPTIMIZERS))}") from None


def _run(opt_target: Any, atoms: Atoms, fmax: float, steps: int, optimizer: str, what: str) -> None:
    opt = _optimizer(optimizer)(opt_target, logfile=None)
    if not opt.run(fmax=fmax, steps=steps):
        f = np.sqrt((opt_target.get_forces() ** 2).sum(axis=1)).max()
        raise RuntimeError(
            f"{what}: not converged to fmax={fmax} eV/A in {steps} {optimizer} steps "
            f"({len(atoms)} atoms, max force {f:.3g} eV/A)"
        )


def relax_positions(atoms: Atoms, calculator: Any = None, fmax: float = 1e-3, steps: int = 2000,
                    optimizer: str = "lbfgs") -> float:
    """Relax the atomic positions of ``atoms`` in place (cell fixed, constraints
    honoured) until every force is below ``fmax`` (eV/A); return the energy (eV).
    ``calculator`` replaces the attached one if given."""
    if calculator is not None:
        atoms.calc = calculator
    _run(atoms, atoms, fmax, steps, optimizer, "position relaxation")
    return float(atoms.get_potential_energy())


def relax_cell(atoms: Atoms, calculator: Any = None, fmax: float = 1e-3, steps: int = 2000,
               mask: Optional[Sequence[int]] = None, hydrostatic: bool = False,
               optimizer: str = "bfgs") -> float:
    """Relax positions and cell of ``atoms`` in place at zero pressure; return the
    energy (eV). ``mask`` (6 Voigt flags xx, yy, zz, yz, xz, xy) restricts the cell
    degrees of freedom; ``hydrostatic`` allows only a uniform scaling. Converged when
    forces and the filter's cell forces (stress x volume, eV) are below ``fmax``."""
    if calculator is not None:
        atoms.calc = calculator
    target = FrechetCellFilter(atoms, mask=mask, hydrostatic_strain=hydrostatic)
    with warnings.catch_warnings():  # scipy's logm of a near-identity deformation
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        _run(target, atoms, fmax, steps, optimizer, "cell relaxation")
    return float(atoms.get_potential_energy())


def cell_area(atoms: Atoms) -> float:
    """Area (A^2) spanned by the first two cell vectors (the surface or fault plane)."""
    return float(np.linalg.norm(np.cross(atoms.cell[0], atoms.cell[1])))


def surface_energy(energy: float, n_atoms: int, bulk_energy_per_atom: float, area: float,
                   faces: int = 2) -> float:
    """Surface energy (eV/A^2) of a slab: (E - N e_bulk) / (faces * area)."""
    return (energy - n_atoms * bulk_energy_per_atom) / (faces * area)


def formation_energy(energy: float, n_atoms: int, bulk_energy_per_atom: float) -> float:
    """Defect formation energy (eV) at fixed chemical potential e_bulk: E - N e_bulk."""
    return energy - n_atoms * bulk_energy_per_atom


def neb_barrier(initial: Atoms, final: Atoms, calculator: Any, n_images: int = 9,
                fmax: float = 1e-2, steps: int = 2000, climb: bool = True,
                k: float = 0.1, optimizer: str = "fire") -> dict:
    """Minimum-energy path between two relaxed end points by (climbing-image) NEB.

    ``n_images`` intermediate images are interpolated linearly (IDPP is not used:
    the end points differ by one hop) and relaxed until the NEB forces are below
    ``fmax`` (eV/A). One calculator is shared by all images. Returns
    ``{"barrier": max(E) - E_initial (eV), "energies": [E_i - E_initial ...]}``.
    """
    images = [initial.copy()] + [initial.copy() for _ in range(n_images)] + [final.copy()]
    for image in images:
        image.calc = calculator
    neb = NEB(images, k=k, climb=climb, method="improvedtangent", allow_shared_calculator=True)
    neb.interpolate()
    _run(neb, initial, fmax, steps, optimizer, f"NEB ({n_images} images, climb={climb})")
    energies = np.array([image.get_potential_energy() for image in images])
    energies -= energies[0]
    return {"barrier": float(energies.max()), "energies": energies.tolist()}
