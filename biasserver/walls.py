"""Restraining walls that keep a G-metaD run physical.

Without walls a bias that keeps pushing atoms into new environments can desorb an
adsorbate or crush two atoms together. Each wall is a one-sided harmonic
restraint and returns (energy eV, forces (N, 3) eV/A, virial (3, 3) eV) with
virial = -dE/d(strain), i-PI's convention.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from . import kernels


def _selection(atoms: Atoms, select) -> np.ndarray:
    """Atom indices from a list of indices or an element symbol."""
    if isinstance(select, str):
        idx = np.flatnonzero(np.array(atoms.get_chemical_symbols()) == select)
        if len(idx) == 0:
            raise ValueError(f"wall selects element {select!r}, which is not in the structure")
        return idx
    idx = np.asarray(select, dtype=int).reshape(-1)
    if len(idx) == 0 or idx.min() < -len(atoms) or idx.max() >= len(atoms):
        raise ValueError(f"wall selects atoms {idx.tolist()} outside 0..{len(atoms) - 1}")
    return idx % len(atoms)


class HeightWall:
    """Upper wall on the height of atoms above a surface.

    E = k/2 (z_i - z_ref - height)^2 for each selected atom with z_i - z_ref > height,
    where z is the coordinate along ``axis`` (0, 1, 2) and z_ref the mean z of the
    ``reference`` atoms (the top surface layer), or 0 when reference is None.
    height in angstrom, k in eV/A^2. Keeps an adsorbate from desorbing.
    """

    kind = "height"

    def __init__(self, atoms: Sequence[int] | str, height: float, k: float,
                 reference: Sequence[int] | str | None = None, axis: int = 2):
        if not k > 0:
            raise ValueError(f"height wall: k must be > 0 eV/A^2, got {k}")
        if axis not in (0, 1, 2):
            raise ValueError(f"height wall: axis must be 0, 1 or 2, got {axis}")
        self.atoms, self.height, self.k = atoms, float(height), float(k)
        self.reference, self.axis = reference, int(axis)

    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        forces = np.zeros((len(atoms), 3))
        z = atoms.positions[:, self.axis]
        ref = None if self.reference is None else _selection(atoms, self.reference)
        z_ref = 0.0 if ref is None else float(z[ref].mean())
        excess = z[_selection(atoms, self.atoms)] - z_ref - self.height
        push = np.where(excess > 0, -self.k * excess, 0.0)   # force on each selected atom
        np.add.at(forces[:, self.axis], _selection(atoms, self.atoms), push)
        if ref is not None:
            forces[ref, self.axis] -= push.sum() / len(ref)
        energy = 0.5 * self.k * float(np.sum(np.where(excess > 0, excess, 0.0) ** 2))
        # positions are explicit variables: -dE/d(strain)_ab = sum_m F_m,a r_m,b
        virial = forces.T @ atoms.positions
        return energy, forces, virial

    def check(self, atoms: Atoms) -> None:
        """ValueError when a selection names atoms or an element ``atoms`` lacks."""
        _selection(atoms, self.atoms)
        if self.reference is not None:
            _selection(atoms, self.reference)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "atoms": self.atoms, "height": self.height, "k": self.k,
                "reference": self.reference, "axis": self.axis}


class DistanceWall:
    """Lower wall on interatomic distances.

    E = sum over pairs closer than ``min_distance`` of k/2 (min_distance - r)^2;
    ``elements``, if given, restricts it to pairs of those two element symbols.
    min_distance in angstrom, k in eV/A^2.
    """

    kind = "distance"

    def __init__(self, min_distance: float, k: float, elements: Sequence[str] | None = None):
        if not min_distance > 0:
            raise ValueError(f"distance wall: min_distance must be > 0 angstrom, got {min_distance}")
        if not k > 0:
            raise ValueError(f"distance wall: k must be > 0 eV/A^2, got {k}")
        if elements is not None and len(elements) != 2:
            raise ValueError(f"distance wall: elements must name two symbols, got {elements}")
        self.min_distance, self.k = float(min_distance), float(k)
        self.elements = None if elements is None else list(elements)

    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        nl = kernels.neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, self.min_distance)
        forces = np.zeros((len(atoms), 3))
        if self.elements is not None:
            symbols = np.array(atoms.get_chemical_symbols())
            a, b = self.elements
            si, sj = symbols[nl.first], symbols[nl.second]
            keep = ((si == a) & (sj == b)) | ((si == b) & (sj == a))
        else:
            keep = np.ones(len(nl.first), dtype=bool)
        r = nl.distances[keep]
        vec = nl.vectors[keep]
        gap = self.min_distance - r
        # the full list holds each pair twice: half of each
        energy = 0.25 * self.k * float(np.sum(gap**2))
        # dE/dR_ij (vector) for each listed pair, halved for the double counting
        dedv = (-0.5 * self.k * gap / r)[:, None] * vec
        for k in range(3):
            forces[:, k] += np.bincount(nl.first[keep], weights=dedv[:, k], minlength=len(atoms))
            forces[:, k] -= np.bincount(nl.second[keep], weights=dedv[:, k], minlength=len(atoms))
        virial = -dedv.T @ vec
        return energy, forces, virial

    def check(self, atoms: Atoms) -> None:
        """ValueError when ``elements`` names an element ``atoms`` lacks."""
        present = set(atoms.get_chemical_symbols())
        for element in self.elements or ():
            if element not in present:
                raise ValueError(f"distance wall names element {element!r}, which is not in the structure")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "min_distance": self.min_distance, "k": self.k,
                "elements": self.elements}


WALL_KINDS = {cls.kind: cls for cls in (HeightWall, DistanceWall)}


def wall_from_dict(spec: dict):
    """Build a wall from its ``to_dict`` form (also the YAML form)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in WALL_KINDS:
        raise ValueError(f"unknown wall kind {kind!r}; known: {', '.join(WALL_KINDS)}")
    try:
        return WALL_KINDS[kind](**spec)
    except TypeError as err:
        raise ValueError(f"{kind} wall: {err}") from None
