"""Minimum-energy path of one H atom on Pt(111): fcc -> hcp -> top -> fcc -> oct.

The paper's Fig. 2 path, computed with any ASE calculator (the truth or one NNP
committee member) on the slab of ``examples/pt111-h`` (3x3x4 Pt(111), bottom
layer fixed, as in the sampling runs):

1. the endpoints are relaxed with that calculator: ``fcc`` and ``hcp`` (H started
   1.5 A above the hollow), ``top`` (H started 1.5 A above a top-layer atom and
   held over it in the plane: EMT has no top minimum, the H atom slides to a
   hollow), ``oct`` (subsurface octahedral: H started 1.0 A under the fcc
   hollow, between the three top-layer and three second-layer atoms, and held on
   the hollow's axis; the metal atoms start in their symmetric positions, so the
   relaxation keeps the site's threefold symmetry).

   Why this subsurface endpoint (measured with EMT on this slab, bottom layer
   fixed, BFGS to 0.001-0.02 eV/A): EMT has no minimum with H under an intact
   top layer. The symmetric octahedral point, +3.45 eV above fcc with H 0.31 A
   below the clean top layer and 1.23 A below its three neighbours (which it
   lifts by 0.92 A), is a stationary point with three unstable modes (Hessian
   eigenvalues -1.10, -1.04, -1.04 eV/A^2, all in the lifted atoms); the
   tetrahedral point under the hcp hollow is no better (+3.63 eV at 0.02 eV/A,
   and round-off alone takes it to a lower-symmetry saddle at +2.88 eV at
   0.001 eV/A). Break the symmetry by 0.01 A, or start H anywhere under the top
   layer off a hollow's axis, and the relaxation ends in EMT's only subsurface
   minimum: a top-layer Pt atom pops out as an adatom 1.97 A above the layer and
   H takes its place, in the top layer's plane (+1.37 eV; +1.87 eV for the same
   exchange in the second layer). That state is a metal-atom exchange, not H
   under the surface, and does not count as this endpoint (see
   :func:`in_site`). The symmetric octahedral point is the one subsurface
   configuration every potential can be relaxed to from the same start and
   compared at;
2. four nudged-elastic-band segments between them (ASE, IDPP interpolation,
   FIRE): fcc -> hcp and fcc -> oct with a climbing image (their saddles),
   hcp -> top and top -> fcc without (top is the highest point of both);
3. each endpoint is checked (:func:`in_site`): a potential whose ``oct``
   relaxation leaves the site (H back above the surface, or a Pt atom pushed
   out) has no octahedral stationary point; its path then ends at the
   ``fallback`` geometry (the truth's relaxed one, unrelaxed), and the result
   says so.

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
    "oct": (2, 1.0, True, 0.0),
}

#: the path's segments in order: (from, to, climbing image)
SEGMENTS: tuple[tuple[str, str, bool], ...] = (
    ("fcc", "hcp", True), ("hcp", "top", False), ("top", "fcc", False), ("fcc", "oct", True))

#: what each endpoint must classify as to count as that site
EXPECTED_SITE = {"fcc": "fcc", "hcp": "hcp", "top": "top", "oct": "subsurface"}

#: how far (A) the subsurface endpoint's H must lie below its top-layer neighbours' plane:
#: 1.23 A at EMT's octahedral point, 0.03 A when H has taken the place of an expelled Pt atom
SUBSURFACE_DEPTH = 0.5


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


def in_site(site: str, info: Mapping[str, Any]) -> bool:
    """Whether a relaxed endpoint (``info`` from :func:`_describe`) is still the site
    ``site``: it classifies as EXPECTED_SITE[site], and for ``oct`` H lies at least
    SUBSURFACE_DEPTH below its top-layer neighbours (not in the layer, where it
    sits after pushing a Pt atom out)."""
    if info["site"] != EXPECTED_SITE[site]:
        return False
    return site != "oct" or -info["h_above_local_plane"] >= SUBSURFACE_DEPTH


def relax_endpoint(calc, site: str, fixed_layers: int = 1, fmax: float = 0.02, steps: int = 300,
                   slab: Atoms | None = None) -> tuple[Atoms, dict[str, Any]]:
    """Relax endpoint ``site`` with ``calc`` (BFGS to ``fmax`` eV/A or ``steps``).
    Returns the structure and {energy (eV), converged, steps, site, h_above_local_plane
    (A), minimum (bool: :func:`in_site`; for ``top`` and ``oct`` a stationary point
    under their constraint and symmetry, not a minimum of EMT)}."""
    from ase.optimize import BFGS

    atoms = start_structure(site, fixed_layers, slab)
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    info = {"energy": float(atoms.get_potential_energy()), "converged": converged,
            "steps": int(opt.get_number_of_steps()), **_describe(atoms)}
    info["minimum"] = in_site(site, info)
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
    """The whole path fcc -> hcp -> top -> fcc -> oct with ``calc`` (see the module
    docstring). ``fallback``: endpoint -> structure used, unrelaxed, when the
    potential's relaxation of that endpoint does not stay in its site.

    Returns (images of all segments, endpoints included once, each with
    ``info['segment']``, ``info['path_energy']`` (eV, relative to fcc) and
    ``info['endpoint']``: the endpoint's name, or "-" for an interior image) and a summary:
    ``sites`` (per endpoint: energy relative to fcc, site, height, converged,
    minimum, used_fallback), ``segments`` (from, to, climb, converged, steps,
    energies, s, saddle site, barrier forward/back), ``barriers`` ({"fcc->hcp": eV,
    "hcp->fcc": ..., "fcc->oct", "oct->fcc", "hcp->top", "top->fcc"}) and
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
