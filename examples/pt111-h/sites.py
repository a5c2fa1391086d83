"""Adsorption-site classification of an H atom on an fcc(111) slab.

Sites, by the H position relative to the metal layers of the same frame:

- ``subsurface``: below the mean height of the top layer minus ``depth`` (A);
- otherwise the nearest, in the surface plane (periodic), of
  ``top`` (over a top-layer atom), ``bridge`` (over the midpoint of two
  neighbouring top-layer atoms), ``hcp`` (over a second-layer atom) and
  ``fcc`` (over a third-layer atom).
"""
from __future__ import annotations

import numpy as np
from ase import Atoms

SITES = ("fcc", "hcp", "bridge", "top", "subsurface")


def metal_layers(atoms: Atoms, metal_indices: np.ndarray, tolerance: float = 0.5) -> list[np.ndarray]:
    """Metal atom indices grouped by layer, top layer first."""
    z = atoms.positions[metal_indices, 2]
    order = np.argsort(-z)
    layers, current = [], [order[0]]
    for k in order[1:]:
        if z[current[-1]] - z[k] > tolerance:
            layers.append(metal_indices[current])
            current = []
        current.append(k)
    layers.append(metal_indices[current])
    return layers


def _lateral_distance(atoms: Atoms, point: np.ndarray, targets: np.ndarray) -> float:
    """Smallest in-plane distance from ``point`` to ``targets`` (M, 3), periodic in a and b."""
    cell2 = atoms.cell.array[:2, :2]
    delta = targets[:, :2] - point[:2]
    frac = np.linalg.solve(cell2.T, delta.T).T
    frac -= np.round(frac)
    return float(np.min(np.linalg.norm(frac @ cell2, axis=1)))


def bridge_points(atoms: Atoms, top: np.ndarray, max_bond: float = 3.3) -> np.ndarray:
    """Midpoints of neighbouring top-layer atoms (minimum image in the plane)."""
    cell2 = atoms.cell.array[:2, :2]
    points = []
    for a in range(len(top)):
        for b in range(a + 1, len(top)):
            d = atoms.positions[top[b], :2] - atoms.positions[top[a], :2]
            frac = np.linalg.solve(cell2.T, d)
            d = (frac - np.round(frac)) @ cell2
            if np.linalg.norm(d) < max_bond:
                points.append(np.append(atoms.positions[top[a], :2] + d / 2, 0.0))
    return np.array(points)


def classify(atoms: Atoms, h_index: int, depth: float = 0.5) -> str:
    """The site of atom ``h_index`` in one frame (see module docstring)."""
    metal = np.array([i for i, s in enumerate(atoms.get_chemical_symbols()) if s != "H"])
    layers = metal_layers(atoms, metal)
    if len(layers) < 3:
        raise ValueError("site classification needs a slab of at least three layers")
    h = atoms.positions[h_index]
    if h[2] < atoms.positions[layers[0], 2].mean() - depth:
        return "subsurface"
    candidates = {
        "top": atoms.positions[layers[0]],
        "bridge": bridge_points(atoms, layers[0]),
        "hcp": atoms.positions[layers[1]],
        "fcc": atoms.positions[layers[2]],
    }
    distances = {site: _lateral_distance(atoms, h, pts) for site, pts in candidates.items() if len(pts)}
    return min(distances, key=distances.get)


def site_series(frames: list[Atoms], h_index: int = -1) -> list[str]:
    """The site of the H atom in every frame."""
    return [classify(f, h_index % len(f)) for f in frames]
