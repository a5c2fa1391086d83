"""Site of an H atom on an fcc(111) metal slab, frame by frame.

Lengths in angstrom. The slab's metal atoms are grouped into layers by height
(the top layer is the highest). In each frame the H atom is

- ``subsurface`` when it lies less than ``clearance`` (default 0.5 A) above the
  local top-layer plane, or below it: the mean height of the top-layer atoms
  within ``LOCAL_RADIUS`` of it in the surface plane (the three atoms of a
  hollow, or an atom and its neighbours). Surface sites sit 0.9-1.9 A above that
  plane; EMT's subsurface minima of Pt(111) lie 0.3-0.6 A below the clean
  surface's top layer, and the H atom lifts its metal neighbours by up to 2 A, so
  neither a fixed depth under the layer's mean height nor layers found by gaps in
  height alone are reliable;
- otherwise the nearest, in the surface plane (periodic in a and b), of ``top``
  (over a top-layer atom), ``bridge`` (over the midpoint of two neighbouring
  top-layer atoms), ``hcp`` (over a second-layer atom) and ``fcc`` (over a
  third-layer atom).
"""
from __future__ import annotations

import numpy as np
from ase import Atoms

SITES = ("fcc", "hcp", "bridge", "top", "subsurface")
LOCAL_RADIUS = 3.0   # A: a hollow's three atoms (1.6 A away) or an atom and its six neighbours (2.8 A)


def _layers_by_gaps(z: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Positions into ``z`` grouped by height, highest first; a gap of more than
    ``tolerance`` (A) starts a new group."""
    order = np.argsort(-z)
    groups, current = [], [order[0]]
    for k in order[1:]:
        if z[current[-1]] - z[k] > tolerance:
            groups.append(np.array(current))
            current = []
        current.append(k)
    groups.append(np.array(current))
    return groups


def metal_layers(atoms: Atoms, metal_indices: np.ndarray, tolerance: float = 0.5) -> list[np.ndarray]:
    """Metal atom indices grouped by layer, top layer first.

    The bottom layer (found by a gap in height of more than ``tolerance`` A) sets the
    number of atoms per layer; the metal atoms, lowest first, then fill layers of that
    size, so atoms lifted out of the top layer (by an H atom below them, or as
    adatoms) still count as top-layer atoms. Slabs whose atom count is not a multiple
    of the bottom layer's are grouped by gaps in height alone.
    """
    metal_indices = np.asarray(metal_indices)
    z = atoms.positions[metal_indices, 2]
    groups = _layers_by_gaps(z, tolerance)
    per_layer = len(groups[-1])
    if len(z) % per_layer:
        return [metal_indices[g] for g in groups]
    upward = metal_indices[np.argsort(z, kind="stable")]
    return [upward[k:k + per_layer] for k in range(0, len(z), per_layer)][::-1]


def _lateral_vectors(atoms: Atoms, point: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """In-plane minimum-image vectors (M, 2) from ``point`` to ``targets`` (M, 3)."""
    cell2 = atoms.cell.array[:2, :2]
    frac = np.linalg.solve(cell2.T, (targets[:, :2] - point[:2]).T).T
    return (frac - np.round(frac)) @ cell2


def _lateral_distance(atoms: Atoms, point: np.ndarray, targets: np.ndarray) -> float:
    """Smallest in-plane distance (A) from ``point`` to ``targets`` (M, 3)."""
    return float(np.min(np.linalg.norm(_lateral_vectors(atoms, point, targets), axis=1)))


def bridge_points(atoms: Atoms, top: np.ndarray, max_bond: float = 3.3) -> np.ndarray:
    """Midpoints (M, 3; z = 0) of top-layer atoms closer than ``max_bond`` (A) in the plane."""
    points = []
    for a in range(len(top)):
        d = _lateral_vectors(atoms, atoms.positions[top[a]], atoms.positions[top[a + 1:]])
        for vector in d[np.linalg.norm(d, axis=1) < max_bond]:
            points.append(np.append(atoms.positions[top[a], :2] + vector / 2, 0.0))
    return np.array(points)


def height_below_surface(atoms: Atoms, h_index: int, top: np.ndarray) -> float:
    """How far (A) atom ``h_index`` lies below the local top-layer plane (negative: above)."""
    h = atoms.positions[h_index]
    near = np.linalg.norm(_lateral_vectors(atoms, h, atoms.positions[top]), axis=1) < LOCAL_RADIUS
    return float(atoms.positions[top[near], 2].mean() - h[2]) if near.any() else float("-inf")


def classify(atoms: Atoms, h_index: int, clearance: float = 0.5) -> str:
    """The site (one of SITES) of atom ``h_index`` in one frame (see the module docstring)."""
    metal = np.array([i for i, s in enumerate(atoms.get_chemical_symbols()) if s != "H"])
    layers = metal_layers(atoms, metal)
    if len(layers) < 3:
        raise ValueError("site classification needs a slab of at least three metal layers")
    if height_below_surface(atoms, h_index, layers[0]) > -clearance:
        return "subsurface"
    h = atoms.positions[h_index]
    candidates = {
        "top": atoms.positions[layers[0]],
        "bridge": bridge_points(atoms, layers[0]),
        "hcp": atoms.positions[layers[1]],
        "fcc": atoms.positions[layers[2]],
    }
    distances = {site: _lateral_distance(atoms, h, pts) for site, pts in candidates.items() if len(pts)}
    return min(distances, key=distances.get)


def site_series(frames: list[Atoms], h_index: int = -1) -> list[str]:
    """The site of the H atom (index ``h_index``, negative from the end) in every frame."""
    return [classify(f, h_index % len(f)) for f in frames]
