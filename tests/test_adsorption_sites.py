"""The H-site classifier on relaxed EMT structures of every site of H on Pt(111)."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from ase import Atom
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixCartesian
from ase.io import read
from ase.optimize import BFGS

from studies.adsorption_sites import SITES, classify, height_below_surface, metal_layers, site_series

SLAB = os.path.join(os.path.dirname(__file__), "..", "examples", "pt111-h", "init.xyz")


@functools.lru_cache(maxsize=None)
def _relaxed(site: str, below: float, lateral_fixed: bool) -> tuple:
    """The example's slab with H started ``below`` (A, negative: above) the top layer over
    an atom of the layer that defines ``site``; relaxed with EMT (bottom layer fixed, H
    free or held over its site in the plane). Returns (atoms, H index, the unrelaxed top
    layer's mean height)."""
    start = read(SLAB)
    slab = start[[a.index for a in start if a.symbol != "H"]]
    layers = metal_layers(slab, np.arange(len(slab)))
    over = {"top": layers[0][0], "hcp": layers[1][0], "fcc": layers[2][0]}
    if site == "bridge":
        xy = slab.positions[layers[0][0], :2] + 0.5 * (slab.cell.array[0, :2])
    else:
        xy = slab.positions[over[site], :2]
    surface = slab.positions[layers[0], 2].mean()
    z = surface - below
    slab.append(Atom("H", (xy[0], xy[1], z)))
    h = len(slab) - 1
    constraints = [FixAtoms(indices=layers[-1])]
    if lateral_fixed:
        constraints.append(FixCartesian(h, mask=(True, True, False)))
    slab.set_constraint(constraints)
    slab.calc = EMT()
    BFGS(slab, logfile=None).run(fmax=0.01, steps=400)
    return slab, h, surface


def relaxed_h(site: str, below: float, lateral_fixed: bool) -> tuple:
    atoms, h, surface = _relaxed(site, below, lateral_fixed)
    return atoms.copy(), h, surface


@pytest.mark.parametrize("site,below,fixed,expected", [
    ("fcc", -1.5, False, "fcc"),
    ("hcp", -1.5, False, "hcp"),
    ("bridge", -1.5, True, "bridge"),
    ("top", -1.5, True, "top"),
    ("fcc", 1.0, False, "subsurface"),    # octahedral, under the fcc hollow
    ("hcp", 1.0, False, "subsurface"),    # tetrahedral, under the hcp hollow
    ("top", 0.3, False, "subsurface"),    # under a surface atom, which it lifts
])
def test_relaxed_sites(site, below, fixed, expected):
    atoms, h, surface = relaxed_h(site, below, fixed)
    assert classify(atoms, h) == expected
    top = metal_layers(atoms, np.arange(h))[0]
    if expected == "subsurface":
        # EMT's subsurface minima sit less than 0.5 A below the clean surface's top layer
        # (H lifts its neighbours): a fixed threshold under the layer's height misses them
        assert surface - 0.7 < atoms.positions[h, 2] < surface + 0.1
    else:
        assert height_below_surface(atoms, h, top) < -0.9


def test_thermal_displacements_keep_the_site():
    """600 K-sized displacements (0.1 A) of a relaxed structure leave its site unchanged."""
    for site, below, fixed, expected in (("fcc", -1.5, False, "fcc"), ("top", -1.5, True, "top"),
                                         ("hcp", 1.0, False, "subsurface")):
        atoms, h, _ = relaxed_h(site, below, fixed)
        frames = []
        for seed in range(5):
            frame = atoms.copy()
            frame.rattle(0.1, seed=seed)
            frames.append(frame)
        assert site_series(frames) == [expected] * 5


@pytest.mark.parametrize("site,height,expected", [
    ("fcc", 1.0, "fcc"), ("hcp", 1.0, "hcp"), ("ontop", 1.6, "top"), ("bridge", 1.2, "bridge"),
    ("fcc", -1.2, "subsurface"),
])
def test_ase_built_sites(site, height, expected):
    slab = fcc111("Pt", (3, 3, 4), a=3.92, vacuum=8.0)
    add_adsorbate(slab, "H", height, site)
    slab.rattle(0.02, seed=1)
    assert classify(slab, len(slab) - 1) == expected


def test_needs_three_layers():
    slab = fcc111("Pt", (2, 2, 2), a=3.92, vacuum=8.0)
    add_adsorbate(slab, "H", 1.0, "fcc")
    with pytest.raises(ValueError, match="three metal layers"):
        classify(slab, len(slab) - 1)
    assert SITES[-1] == "subsurface"
