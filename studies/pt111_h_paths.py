"""Minimum-energy path of one H atom on Pt(111): fcc -> hcp -> top -> fcc -> tet.

The paper's Fig. 2 path, computed with any ASE calculator (the truth or one NNP
committee member) on the slab of ``examples/pt111-h`` (3x3x4 Pt(111), bottom
layer fixed, as in the sampling runs):

1. the endpoints are relaxed with that calculator: ``fcc`` and ``hcp`` (H started
   1.5 A above the hollow), ``top`` (H started 1.5 A above a top-layer atom and
   held over it in the plane: EMT has no top minimum, the H atom slides to a
   hollow), ``tet`` (subsurface tetrahedral: H started 1.0 A under an hcp hollow,
   between three top-layer atoms and the second-layer atom beneath, and 0.15 A
   off the hollow's axis. On the axis EMT's landscape is flat and unreliable: a
   relaxation that keeps the symmetry stops at +3.6 eV above fcc (force
   tolerance 0.02 eV/A) or, by round-off, part-way down (+2.9 eV at 0.01 eV/A);
   with the metal atoms' symmetry broken by 0.02 A, H held on the axis settled at
   +3.4 eV in one trial and left for the hcp site in another. Off the axis H
   settles in the top layer's plane at +1.37 eV (tolerance 0.02 eV/A or tighter),
   EMT's subsurface minimum near the hcp hollow, the endpoint used here);
2. four nudged-elastic-band segments between them (ASE, IDPP interpolation,
   FIRE): fcc -> hcp and fcc -> tet with a climbing image (their saddles),
   hcp -> top and top -> fcc without (top is the highest point of both);
3. each endpoint is classified (:mod:`studies.adsorption_sites`): a potential
   whose ``tet`` relaxation leaves the subsurface has no tetrahedral minimum;
   its path then ends at the ``fallback`` geometry (the truth's relaxed one,
   unrelaxed), and the result says so.

Energies in eV relative to the potential's own relaxed fcc structure; lengths in
A; the path coordinate is the cumulative distance between consecutive images in
configuration space (all atoms, minimum image).

:func:`energies_on_images` evaluates a potential on given images (the truth's
path), the image-by-image comparison of a potential with the truth.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atom, Atoms
from ase.constraints import FixAtoms, FixCartesian
from ase.io import read

from .adsorption_sites import classify, height_below_surface, metal_layers

#: the slab of the main example (37 atoms: 36 Pt + 1 H)
SLAB_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "examples", "pt111-h", "init.xyz")

#: endpoint -> (layer the H atom starts over: 0 top, 1 second = hcp, 2 third = fcc;
#: start depth below the top layer in A, negative = above; H held over it in the plane;
#: start offset from that atom along the cell's a direction, A)
ENDPOINTS: dict[str, tuple[int, float, bool, float]] = {
    "fcc": (2, -1.5, False, 0.0),
    "hcp": (1, -1.5, False, 0.0),
    "top": (0, -1.5, True, 0.0),
    "tet": (1, 1.0, False, 0.15),
}

#: the path's segments in order: (from, to, climbing image)
SEGMENTS: tuple[tuple[str, str, bool], ...] = (
    ("fcc", "hcp", True), ("hcp", "top", False), ("top", "fcc", False), ("fcc", "tet", True))

#: what each endpoint must classify as to count as that site's minimum
EXPECTED_SITE = {"fcc": "fcc", "hcp": "hcp", "top": "top", "tet": "subsurface"}


def clean_slab(path: str = SLAB_FILE) -> Atoms:
    """The Pt atoms of the example's structure, periodic in all three directions
    (the vacuum, 16 A, is wider than any cutoff used here)."""
    atoms = read(path)
    slab = atoms[[a.index for a in atoms if a.symbol != "H"]]
    slab.pbc = True
    return slab


def fixed_indices(slab: Atoms, fixed_layers: int) -> np.ndarray:
    """Indices of the ``fixed_layers`` bottom metal layers of ``slab``."""
    metal = np.array([a.index for a in slab if a.symbol != "H"])
    layers = metal_layers(slab, metal)
    if not 0 <= fixed_layers < len(layers):
        raise ValueError(f"fixed_layers must be between 0 and {len(layers) - 1}, got {fixed_layers}")
    return np.sort(np.concatenate(layers[len(layers) - fixed_layers:])) if fixed_layers else np.array([], int)


def start_structure(site: str, fixed_layers: int = 1, slab: Atoms | None = None) -> Atoms:
    """The slab with H at the start position of endpoint ``site`` (see ENDPOINTS),
    its constraints set (bottom layers fixed; H held laterally for ``top``)."""
    if site not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {site!r} (known: {', '.join(ENDPOINTS)})")
    slab = (slab if slab is not None else clean_slab()).copy()
    layers = metal_layers(slab, np.arange(len(slab)))
    layer, below, lateral, offset = ENDPOINTS[site]
    surface = slab.positions[layers[0], 2].mean()
    # the atom of that layer nearest to the cell's centre, so that the site is away from the edges
    centre = 0.5 * (slab.cell.array[0, :2] + slab.cell.array[1, :2])
    over = layers[layer][np.argmin(np.linalg.norm(slab.positions[layers[layer], :2] - centre, axis=1))]
    x, y = slab.positions[over, :2] + offset * slab.cell.array[0, :2] / np.linalg.norm(slab.cell.array[0, :2])
    slab.append(Atom("H", (x, y, surface - below)))
    constraints = [FixAtoms(indices=fixed_indices(slab, fixed_layers))]
    if lateral:
        constraints.append(FixCartesian(len(slab) - 1, mask=(True, True, False)))
    slab.set_constraint(constraints)
    return slab


def _describe(atoms: Atoms) -> dict[str, Any]:
    h = len(atoms) - 1
    top = metal_layers(atoms, np.arange(h))[0]
    return {"site": classify(atoms, h), "h_above_local_plane": -height_below_surface(atoms, h, top)}


def relax_endpoint(calc, site: str, fixed_layers: int = 1, fmax: float = 0.02, steps: int = 300,
                   slab: Atoms | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Relax endpoint ``site`` with ``calc`` (BFGS to ``fmax`` eV/A or ``steps``).
    Returns the structure and {energy (eV), converged, steps, site, h_above_local_plane
    (A), minimum (bool: it classifies as EXPECTED_SITE[site])}."""
    from ase.optimize import BFGS

    atoms = start_structure(site, fixed_layers, slab)
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    info = {"energy": float(atoms.get_potential_energy()), "converged": converged,
            "steps": int(opt.get_number_of_steps()), **_describe(atoms)}
    info["minimum"] = info["site"] == EXPECTED_SITE[site]
    return atoms, info


def _path_coordinate(images: Sequence[Atoms]) -> np.ndarray:
    """Cumulative configuration-space distance (A) along the images (minimum image)."""
    from ase.geometry import find_mic

    s = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        d, _ = find_mic(b.positions - a.positions, a.cell, a.pbc)
        s.append(s[-1] + float(np.linalg.norm(d)))
    return np.array(s)


def neb_segment(calc, start: Atoms, end: Atoms, n_images: int, climb: bool, fmax: float = 0.05,
                steps: int = 300, fixed: Sequence[int] = ()) -> tuple[list[Atoms], dict[str, Any]]:
    """A (climbing-image) NEB between two relaxed structures with ``n_images``
    interior images, all evaluated with the one calculator ``calc``; ``fixed``:
    atoms held in every image. Returns the images (endpoints included, energies
    attached as ``info['energy']``) and {converged, steps}."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    images = [start.copy()] + [start.copy() for _ in range(n_images)] + [end.copy()]
    for image in images:
        image.set_constraint(FixAtoms(indices=list(fixed)))
        image.calc = calc
    band = NEB(images, climb=climb, method="improvedtangent", allow_shared_calculator=True)
    band.interpolate(method="idpp", mic=True)
    opt = FIRE(band, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    for image in images:
        image.info["path_energy"] = float(image.get_potential_energy())
    return images, {"converged": converged, "steps": int(opt.get_number_of_steps())}


def minimum_energy_path(calc, n_images: int = 5, fmax: float = 0.05, steps: int = 300,
                        relax_fmax: float = 0.02, relax_steps: int = 300, fixed_layers: int = 1,
                        fallback: Mapping[str, Atoms] | None = None) -> tuple[list[Atoms], dict[str, Any]]:
    """The whole path fcc -> hcp -> top -> fcc -> tet with ``calc`` (see the module
    docstring). ``fallback``: endpoint -> structure used, unrelaxed, when the
    potential's relaxation of that endpoint does not stay in its site.

    Returns (images of all segments, endpoints included once, each with
    ``info['segment']``, ``info['path_energy']`` (eV, relative to fcc) and
    ``info['endpoint']``: the endpoint's name, or "-" for an interior image) and a summary:
    ``sites`` (per endpoint: energy relative to fcc, site, height, converged,
    minimum, used_fallback), ``segments`` (from, to, climb, converged, steps,
    energies, s, saddle site, barrier forward/back), ``barriers`` ({"fcc->hcp": eV,
    "hcp->fcc": ..., "fcc->tet", "tet->fcc", "hcp->top", "top->fcc"}) and
    ``max_energy`` (eV)."""
    ends: dict[str, Atoms] = {}
    sites: dict[str, dict[str, Any]] = {}
    for site in ENDPOINTS:
        atoms, info = relax_endpoint(calc, site, fixed_layers, relax_fmax, relax_steps)
        info["used_fallback"] = False
        if not info["minimum"] and fallback is not None and site in fallback:
            atoms = fallback[site].copy()
            atoms.calc = calc
            info.update(used_fallback=True, relaxed_to=info["site"], energy=float(atoms.get_potential_energy()),
                        **_describe(atoms))
        ends[site], sites[site] = atoms, info
    e0 = sites["fcc"]["energy"]
    for info in sites.values():
        info["energy_absolute"] = info["energy"]
        info["energy"] = info["energy_absolute"] - e0
    fixed = fixed_indices(ends["fcc"], fixed_layers)
    all_images: list[Atoms] = []
    segments = []
    for k, (a, b, climb) in enumerate(SEGMENTS):
        images, run = neb_segment(calc, ends[a], ends[b], n_images, climb, fmax, steps, fixed)
        energies = np.array([im.info["path_energy"] for im in images]) - e0
        top = int(np.argmax(energies))
        segments.append({"from": a, "to": b, "climb": climb, **run, "energies": energies.tolist(),
                         "s": _path_coordinate(images).tolist(), "highest_image": top,
                         "highest_site": _describe(images[top])["site"],
                         "barrier_forward": float(energies.max() - energies[0]),
                         "barrier_back": float(energies.max() - energies[-1])})
        for j, image in enumerate(images):
            if k and j == 0:
                continue        # the previous segment's last image
            image = image.copy()
            label = a if j == 0 else (b if j == len(images) - 1 else "-")
            image.info.update(segment=k, path_energy=float(energies[j]), endpoint=label)
            all_images.append(image)
    barriers = {}
    for seg in segments:
        barriers[f"{seg['from']}->{seg['to']}"] = seg["barrier_forward"]
        barriers[f"{seg['to']}->{seg['from']}"] = seg["barrier_back"]
    summary = {"sites": sites, "segments": segments, "barriers": barriers,
               "max_energy": float(max(max(s["energies"]) for s in segments)),
               "settings": {"n_images": n_images, "fmax": fmax, "steps": steps, "relax_fmax": relax_fmax,
                            "relax_steps": relax_steps, "fixed_layers": fixed_layers}}
    return all_images, summary


def energies_on_images(calc, images: Sequence[Atoms]) -> np.ndarray:
    """Energies (eV) of ``calc`` on ``images``, relative to the first image."""
    out = []
    for image in images:
        a = image.copy()
        a.calc = calc
        out.append(a.get_potential_energy())
    return np.array(out) - out[0]


def endpoint_structures(images: Sequence[Atoms]) -> dict[str, Atoms]:
    """The endpoints of a path written by :func:`minimum_energy_path` (by their
    ``endpoint`` label), e.g. the truth's, to serve as ``fallback``."""
    out = {}
    for image in images:
        label = image.info.get("endpoint")
        if label and label != "-" and label not in out:
            out[label] = image.copy()
    return out
