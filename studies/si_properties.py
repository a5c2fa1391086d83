"""Diamond-silicon property recipes (the G-metaD paper's Fig. 4 test set).

Recipes after the GAP-18 silicon testing framework (libAtoms/silicon-testing-
framework; Bartok et al., PRX 8, 041048 (2018)), written anew for ASE. Every
recipe takes any ASE calculator and ``quick`` (small cells and a looser force
criterion, for CI) and returns a number:

=========================  ==========================================  ========
key                        recipe                                      unit
=========================  ==========================================  ========
a0                         8-atom cubic cell, hydrostatic relaxation   A
cohesive_energy            E_bulk/atom - E_isolated_atom               eV/atom
bulk_modulus               (C11 + 2 C12) / 3                           GPa
C11, C12                   stress-strain, central differences          GPa
C44                        shear stress-strain, ions relaxed           GPa
C44_unrelaxed              shear stress-strain, ions clamped           GPa
surface_100_2x1            (2,2,N) [110],[-110],[001] slab, dimers   eV/A^2
surface_110                (1,1,N) [001],[1-10],[110] slab, relaxed    eV/A^2
surface_111_shuffle        (1,1,N) [1-10],[10-1],[111], shuffle cut    eV/A^2
surface_111_das_3x3        3x3 DAS face minus unrelaxed 1x1 face       eV/A^2
vacancy                    pull 4 neighbours in 13-16 %, rattle        eV
interstitial_tetrahedral   atom at the T site, relaxed                 eV
interstitial_hexagonal     atom at the H site, frozen along [111]      eV
interstitial_dumbbell      <110> split pair on one site, relaxed       eV
vacancy_migration          64 atoms, climbing-image NEB                eV
gb_sigma3_112              framework's 48-atom cell, positions+cell    eV/A^2
usf_shuffle, usf_glide     (111) cell, c tilted, relaxed along z       eV/A^2
=========================  ==========================================  ========

Slabs have two equal faces: gamma = (E - N e_bulk) / (2 A). Defect energies are
at the bulk chemical potential: E - N e_bulk. All cells are built at the
calculator's own relaxed a0 (:func:`si_bulk`), computed once and passed on by
:func:`compute_all`. The structures of the DAS reconstruction and the grain
boundary are the framework's (``studies/data/si``, see its README).

Reference values :data:`SW_REFERENCE` are those of matscipy's Stillinger-Weber
(original parameters) with these recipes at full size; a recipe is taken as right
when the SW truth reproduces them within 2 %.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
from ase import Atom, Atoms, units
from ase.build import bulk as ase_bulk
from ase.build import make_supercell
from ase.constraints import FixAtoms, FixCartesian, FixedPlane
from ase.io import read
from ase.lattice.cubic import Diamond

from .properties import (cell_area, formation_energy, neb_barrier, relax_cell,
                         relax_positions, surface_energy)

__all__ = [
    "SW_REFERENCE", "UNITS", "DATA_DIR", "Sizes", "SiBulk", "sizes", "si_bulk",
    "lattice_constant", "cohesive_energy", "elastic_constants", "bulk_modulus",
    "surface_100_2x1", "surface_110", "surface_111_shuffle", "surface_111_das_3x3",
    "vacancy_formation", "interstitial_tetrahedral", "interstitial_hexagonal",
    "interstitial_dumbbell", "vacancy_migration", "gb_sigma3_112",
    "unstable_stacking_fault", "compute_all", "sw_calculator", "PROPERTY_KEYS",
]

#: the framework's structures, shipped with the package
DATA_DIR = Path(__file__).resolve().parent / "data" / "si"

#: Stillinger-Weber (matscipy, original parameters) values of these recipes at full
#: size, from the project's design reference (eV, eV/atom, eV/A^2, A)
SW_REFERENCE: Dict[str, float] = {
    "a0": 5.431,
    "cohesive_energy": -4.3366,
    "surface_100_2x1": 0.0899,
    "surface_110": 0.1040,
    "surface_111_shuffle": 0.0849,
    "surface_111_das_3x3": 0.1275,
    "vacancy": 2.694,
    "interstitial_tetrahedral": 5.001,
    "interstitial_hexagonal": 6.586,
    "interstitial_dumbbell": 4.468,
    "vacancy_migration": 0.517,
    "gb_sigma3_112": 0.0775,
    "usf_shuffle": 0.0543,
    "usf_glide": 0.1929,
}

#: unit of every key of :func:`compute_all`, in its (stable) order
UNITS: Dict[str, str] = {
    "a0": "A",
    "cohesive_energy": "eV/atom",
    "bulk_modulus": "GPa",
    "C11": "GPa",
    "C12": "GPa",
    "C44": "GPa",
    "C44_unrelaxed": "GPa",
    "surface_100_2x1": "eV/A^2",
    "surface_110": "eV/A^2",
    "surface_111_shuffle": "eV/A^2",
    "surface_111_das_3x3": "eV/A^2",
    "vacancy": "eV",
    "interstitial_tetrahedral": "eV",
    "interstitial_hexagonal": "eV",
    "interstitial_dumbbell": "eV",
    "vacancy_migration": "eV",
    "gb_sigma3_112": "eV/A^2",
    "usf_shuffle": "eV/A^2",
    "usf_glide": "eV/A^2",
}
PROPERTY_KEYS = tuple(UNITS)


@dataclass(frozen=True)
class Sizes:
    """Cell sizes and convergence of one mode.

    fmax: force criterion of every relaxation (eV/A); neb_fmax: of the NEB;
    defect_repeat: cubic 8-atom cells per edge of the defect supercells (3 -> 216
    atoms); migration_repeat: of the NEB cell; neb_images: intermediate images;
    slab_layers: bulk repeats along the surface normal; sf_repeat: 6-atom (111)
    cells stacked in the stacking-fault cell; sf_points: points on each fault path.
    """

    fmax: float
    neb_fmax: float
    defect_repeat: int
    migration_repeat: int
    neb_images: int
    slab_layers: int
    sf_repeat: int
    sf_points: int


FULL = Sizes(fmax=1e-3, neb_fmax=1e-3, defect_repeat=3, migration_repeat=2, neb_images=9,
             slab_layers=10, sf_repeat=3, sf_points=7)
QUICK = Sizes(fmax=1e-2, neb_fmax=1e-2, defect_repeat=2, migration_repeat=2, neb_images=4,
              slab_layers=4, sf_repeat=2, sf_points=7)


def sizes(quick: bool) -> Sizes:
    """The :class:`Sizes` of the quick (CI) or full mode."""
    return QUICK if quick else FULL


def sw_calculator():
    """matscipy Stillinger-Weber with the original Si parameters, built as
    ``gmetad driver sw`` builds it."""
    from drivers.calculators import make_calculator

    return make_calculator("sw")


# ---------------------------------------------------------------- bulk


@dataclass
class SiBulk:
    """The calculator's relaxed diamond crystal: lattice constant a0 (A), energy per
    atom (eV), and the relaxed 8-atom cubic cell."""

    a0: float
    energy_per_atom: float
    cell8: Atoms


def si_bulk(calculator: Any, quick: bool = False) -> SiBulk:
    """Relax the 8-atom cubic diamond cell at zero pressure (uniform scaling; the
    diamond positions carry no forces by symmetry)."""
    atoms = Diamond("Si", latticeconstant=5.44)
    relax_cell(atoms, calculator, fmax=1e-5, hydrostatic=True)
    a0 = float(np.cbrt(atoms.get_volume()))
    return SiBulk(a0=a0, energy_per_atom=float(atoms.get_potential_energy()) / len(atoms),
                  cell8=atoms)


def _bulk(calculator: Any, quick: bool, bulk: Optional[SiBulk]) -> SiBulk:
    return bulk if bulk is not None else si_bulk(calculator, quick)


def lattice_constant(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Equilibrium cubic lattice constant a0 (A)."""
    return _bulk(calculator, quick, bulk).a0


def cohesive_energy(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """E_bulk/atom minus the energy of one isolated atom (eV/atom; negative)."""
    b = _bulk(calculator, quick, bulk)
    atom = Atoms("Si", cell=[20.0, 20.0, 20.0], pbc=False)
    atom.calc = calculator
    return b.energy_per_atom - float(atom.get_potential_energy())


def _stress(atoms: Atoms, calculator: Any, strain: np.ndarray, relax: bool, fmax: float) -> np.ndarray:
    """Stress (eV/A^3, 3x3) of ``atoms`` under the symmetric ``strain``."""
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    strained.calc = calculator
    if relax:
        relax_positions(strained, fmax=fmax, optimizer="bfgs")
    return strained.get_stress(voigt=False)


def elastic_constants(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None,
                      strain: float = 1e-3) -> Dict[str, float]:
    """Cubic elastic constants (GPa) of the relaxed 8-atom cell by central
    differences of the stress in the strain (+-``strain``): C11 and C12 from a
    uniaxial xx strain (no internal relaxation by symmetry), C44 from a yz shear
    with the ions relaxed, C44_unrelaxed with them clamped at the homogeneously
    strained positions; bulk_modulus = (C11 + 2 C12)/3."""
    b = _bulk(calculator, quick, bulk)
    fmax = 1e-5  # internal relaxation must be exact: the shear response is a small difference
    exx = np.zeros((3, 3))
    exx[0, 0] = strain
    ds = (_stress(b.cell8, calculator, exx, False, fmax) - _stress(b.cell8, calculator, -exx, False, fmax)) / (2 * strain)
    c11, c12 = ds[0, 0], 0.5 * (ds[1, 1] + ds[2, 2])
    eyz = np.zeros((3, 3))
    eyz[1, 2] = eyz[2, 1] = 0.5 * strain  # engineering shear gamma_yz = strain
    out = {}
    for key, relax in (("C44", True), ("C44_unrelaxed", False)):
        d = (_stress(b.cell8, calculator, eyz, relax, fmax) - _stress(b.cell8, calculator, -eyz, relax, fmax)) / (2 * strain)
        out[key] = d[1, 2] / units.GPa
    return {"bulk_modulus": (c11 + 2 * c12) / 3 / units.GPa, "C11": c11 / units.GPa,
            "C12": c12 / units.GPa, **out}


def bulk_modulus(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Bulk modulus (GPa) = (C11 + 2 C12)/3 of :func:`elastic_constants`."""
    return elastic_constants(calculator, quick, bulk)["bulk_modulus"]


# ---------------------------------------------------------------- surfaces


def _slab(a0: float, directions, repeat, vacuum: float = 10.0, shift: float = 0.0) -> tuple:
    """Bulk cell of ``repeat`` along ``directions`` and the same atoms with ``vacuum``
    (A) added along z after shifting them by ``shift`` (A) along z (choosing where
    the cut falls). Returns (bulk, slab)."""
    if np.linalg.det(np.array(directions, float)) <= 0:
        raise ValueError(f"slab directions {directions} are left-handed")
    bulk = Diamond("Si", latticeconstant=a0, directions=directions) * repeat
    slab = bulk.copy()
    slab.positions[:, 2] += shift
    slab.wrap()
    slab.cell[2, 2] += vacuum
    return bulk, slab


def _slab_energy(slab: Atoms, calculator: Any, e_bulk: float, relax: bool, fmax: float) -> float:
    slab.calc = calculator
    energy = relax_positions(slab, fmax=fmax) if relax else float(slab.get_potential_energy())
    return surface_energy(energy, len(slab), e_bulk, cell_area(slab))


def surface_100_2x1(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None,
                    pull: float = 0.3, seed: int = 0) -> float:
    """Relaxed (100) 2x1 surface energy (eV/A^2): a (2,2,N) slab of [110], [-110],
    [001] with 10 A of vacuum; on both faces the outermost atoms are paired into
    dimers along the direction of their dangling bonds (each pair's gap closed by
    ``pull``), rattled by 0.02 A and relaxed."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    _, slab = _slab(b.a0, [[1, 1, 0], [-1, 1, 0], [0, 0, 1]], (2, 2, s.slab_layers), shift=0.1)
    z = slab.positions[:, 2]
    for face, sign in ((z.max(), -1.0), (z.min(), 1.0)):
        top = np.where(np.abs(z - face) < 0.1)[0]
        below = np.where(np.abs(z - (face + sign * b.a0 / 4)) < 0.1)[0]
        # back bonds lie in the plane of one in-plane axis; dimers form along the other
        d = slab.get_distances(top[0], below, mic=True, vector=True)
        d = d[np.argmin(np.linalg.norm(d, axis=1))]
        axis = 1 if abs(d[0]) > abs(d[1]) else 0
        spacing = b.a0 / np.sqrt(2)
        used = set()
        for i in top:
            if i in used:
                continue
            for j in top:
                v = slab.get_distance(i, j, mic=True, vector=True)
                if j != i and j not in used and abs(abs(v[axis]) - spacing) < 0.1 and abs(v[1 - axis]) < 0.1:
                    slab.positions[i] += 0.5 * pull * v
                    slab.positions[j] -= 0.5 * pull * v
                    used.update((i, j))
                    break
    slab.rattle(0.02, seed=seed)
    return _slab_energy(slab, calculator, b.energy_per_atom, True, s.fmax)


def surface_110(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Relaxed (110) 1x1 surface energy (eV/A^2): (1,1,N) slab of [001], [1-10],
    [110] with 10 A of vacuum."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    _, slab = _slab(b.a0, [[0, 0, 1], [1, -1, 0], [1, 1, 0]], (1, 1, s.slab_layers), shift=0.1)
    return _slab_energy(slab, calculator, b.energy_per_atom, True, s.fmax)


def _slab_111(a0: float, layers: int) -> Atoms:
    """(1,1,N) slab of [1-10], [10-1], [111], cut through the wide gap between
    (111) double layers (one bond per surface atom: the shuffle plane)."""
    _, slab = _slab(a0, [[1, -1, 0], [1, 0, -1], [1, 1, 1]], (1, 1, layers),
                    shift=2.0 * a0 / 5.44)
    return slab


def surface_111_shuffle(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None,
                        relax: bool = True) -> float:
    """(111) 1x1 surface energy of the shuffle cut (eV/A^2), relaxed (or not)."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    return _slab_energy(_slab_111(b.a0, s.slab_layers), calculator, b.energy_per_atom, relax, s.fmax)


def surface_111_das_3x3(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Energy (eV/A^2) of the (111) 3x3 dimer-adatom-stacking-fault face: the
    framework's 8-layer slab, scaled in-plane to a0, relaxed with its
    ``move_mask == 0`` atoms fixed; (E - N e_bulk)/A minus the unrelaxed (111) 1x1
    shuffle surface energy of the slab's other, bulk-terminated face."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    e111 = _slab_energy(_slab_111(b.a0, 10), calculator, b.energy_per_atom, False, s.fmax)
    surf = read(DATA_DIR / "si111_3x3_das_8layer.xyz", format="extxyz")
    cell = surf.cell.array
    # the 3x3 in-plane vector is 3 (111) 1x1 vectors of length a0/sqrt(2)
    surf.set_cell(cell * (3 * b.a0 / np.sqrt(2) / np.linalg.norm(cell[0])), scale_atoms=True)
    if "move_mask" in surf.arrays:  # ASE's extxyz reader turns move_mask into FixAtoms itself
        surf.set_constraint(FixAtoms(indices=np.where(surf.arrays["move_mask"] == 0)[0]))
    if not surf.constraints:
        raise ValueError(f"{DATA_DIR / 'si111_3x3_das_8layer.xyz'}: no move_mask column (fixed atoms)")
    surf.calc = calculator
    energy = relax_positions(surf, fmax=s.fmax)
    return surface_energy(energy, len(surf), b.energy_per_atom, cell_area(surf), faces=1) - e111


# ---------------------------------------------------------------- point defects


def _supercell(b: SiBulk, repeat: int) -> Atoms:
    return b.cell8.copy() * (repeat, repeat, repeat)


def _neighbours(atoms: Atoms, index: int, a0: float) -> np.ndarray:
    d = atoms.get_distances(index, range(len(atoms)), mic=True)
    return np.where((d > 0.1) & (d < 1.2 * a0 * np.sqrt(3) / 4))[0]  # first shell: bond a0 sqrt(3)/4


def _pull_in(atoms: Atoms, centre: int, a0: float) -> np.ndarray:
    """Move the 4 neighbours of ``centre`` towards it by 13, 14, 15, 16 % of their
    distance (breaking the vacancy's tetrahedral symmetry); return their indices."""
    nbrs = _neighbours(atoms, centre, a0)
    if len(nbrs) != 4:
        raise RuntimeError(f"expected 4 neighbours of atom {centre}, found {len(nbrs)}")
    for k, i in enumerate(nbrs):
        atoms.positions[i] += (0.13 + 0.01 * k) * atoms.get_distance(i, centre, mic=True, vector=True)
    return nbrs


def _central_atom(atoms: Atoms) -> int:
    centre = atoms.cell.array.sum(axis=0) / 2
    return int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))


def vacancy_formation(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None,
                      seed: int = 0) -> float:
    """Relaxed vacancy formation energy (eV): 216-atom cell (64 quick), the 4
    neighbours of the removed atom pulled in by 13-16 %, rattled by 0.1 A, relaxed.
    (A symmetric start stays in the unrelaxed-like saddle, 4.34 eV with SW.)"""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    atoms = _supercell(b, s.defect_repeat)
    centre = _central_atom(atoms)
    _pull_in(atoms, centre, b.a0)
    del atoms[centre]
    atoms.rattle(0.1, seed=seed)
    energy = relax_positions(atoms, calculator, fmax=s.fmax)
    return formation_energy(energy, len(atoms), b.energy_per_atom)


def _interstitial(b: SiBulk, calculator: Any, s: Sizes, atoms: Atoms) -> float:
    energy = relax_positions(atoms, calculator, fmax=s.fmax)
    return formation_energy(energy, len(atoms), b.energy_per_atom)


def interstitial_tetrahedral(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Tetrahedral interstitial formation energy (eV): an atom added at the T site
    (0, 0, a0/2) of the 216-atom (64 quick) cell, nudged by a few mA, relaxed."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    atoms = _supercell(b, s.defect_repeat)
    atoms.append(Atom("Si", (0.001, 0.002, b.a0 / 2 + 0.003)))
    return _interstitial(b, calculator, s, atoms)


def interstitial_hexagonal(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Hexagonal interstitial formation energy (eV): an atom at the centre of a
    six-ring, a0 (5/8, 5/8, 5/8) in the central cubic cell of the 216-atom (64
    quick) cell, relaxed with its motion along [111] frozen (along [111] the H site
    is a saddle between two T sites)."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    atoms = _supercell(b, s.defect_repeat)
    origin = float(s.defect_repeat // 2)
    atoms.append(Atom("Si", b.a0 * (origin + 5.0 / 8.0) * np.ones(3)))
    atoms.set_constraint(FixedPlane(len(atoms) - 1, direction=[1, 1, 1]))
    return _interstitial(b, calculator, s, atoms)


def interstitial_dumbbell(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """<110> dumbbell (split) interstitial formation energy (eV): the atom at the
    site a0 (-1/4, 1/4, 3/4) and an added one share the site, split roughly along
    [-110] (the framework's start), relaxed."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    atoms = _supercell(b, s.defect_repeat)
    site = b.a0 * np.array([-0.25, 0.25, 0.75])
    d = atoms.positions - site
    d -= np.round(d @ np.linalg.inv(atoms.cell.array)) @ atoms.cell.array
    host = int(np.argmin(np.linalg.norm(d, axis=1)))
    atoms.positions[host] = site + np.array([-1.0, 1.0, -0.5])
    atoms.append(Atom("Si", (-0.5, 0.5, b.a0 / 2 + 1.0)))
    atoms.wrap()
    return _interstitial(b, calculator, s, atoms)


def vacancy_migration(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Vacancy migration barrier (eV) by climbing-image NEB in the 64-atom cell: the
    initial vacancy is the relaxed broken-symmetry one (neighbours pulled in by
    13-16 %); the final has a neighbour hopped into the vacant site and is relaxed
    likewise; 9 intermediate images (3 quick)."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    perfect = _supercell(b, s.migration_repeat)
    centre = _central_atom(perfect)
    original = perfect.positions[centre].copy()

    initial = perfect.copy()
    nbrs = _pull_in(initial, centre, b.a0)
    hopper = int(nbrs[0])
    del initial[centre]
    relax_positions(initial, calculator, fmax=s.fmax)

    final = perfect.copy()
    _pull_in(final, hopper, b.a0)
    final.positions[hopper] = original
    del final[centre]
    relax_positions(final, calculator, fmax=s.fmax)
    return neb_barrier(initial, final, calculator, n_images=s.neb_images, fmax=s.neb_fmax)["barrier"]


# ---------------------------------------------------------------- extended defects


def gb_sigma3_112(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None) -> float:
    """Sigma3 (112) symmetric tilt grain-boundary energy (eV/A^2): the framework's
    48-atom cell with two boundaries, positions and cell relaxed at zero stress;
    (E - N e_bulk) / (2 A), A the boundary plane (first two cell vectors)."""
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    gb = read(DATA_DIR / "gb_sigma3_112.xyz", format="extxyz")
    gb.calc = calculator
    energy = relax_cell(gb, fmax=s.fmax)
    return surface_energy(energy, len(gb), b.energy_per_atom, cell_area(gb))


#: fault paths in units of the (111) cell's in-plane vectors, and where the cut
#: falls (A shift along [111] putting the cell boundary in the wide gap between
#: double layers for shuffle, in the narrow one for glide)
_SF_PATHS = {
    "shuffle": ((1.0, 0.0), -1.17),
    "glide": ((1.0 / 3.0, 2.0 / 3.0), 0.4),
}


def _sf_cell(a0: float, repeat: int) -> Atoms:
    """(111) cell of diamond Si: in-plane vectors a0/2 [1-10], a0/2 [01-1] in the
    xy plane, c = repeat * a0 [111] along z (6 atoms per repeat)."""
    prim = ase_bulk("Si", "diamond", a=a0)  # fcc vectors a0/2 (011), (101), (110)
    cell6 = make_supercell(prim, [[-1, 1, 0], [0, -1, 1], [1, 1, 1]])
    a1, a2, c = cell6.cell.array
    x = a1 / np.linalg.norm(a1)
    zhat = c / np.linalg.norm(c)
    rot = np.array([x, np.cross(zhat, x), zhat])  # rows: new x, y, z axes
    cell6.set_cell(cell6.cell.array @ rot.T, scale_atoms=True)
    return cell6 * (1, 1, repeat)


def unstable_stacking_fault(calculator: Any, quick: bool = False, bulk: Optional[SiBulk] = None,
                            plane: str = "shuffle", points: Optional[int] = None) -> float:
    """Unstable stacking-fault energy (eV/A^2) on the shuffle or glide (111) plane:
    the 18-atom (111) cell (12 quick) is faulted at its boundary by tilting c by a
    fraction of the slip path (shuffle: a0/2 [1-10]; glide: to the intrinsic fault,
    a0/6 [11-2]); at each of ``points`` equally spaced points the atoms relax along
    z and c_z relaxes; the maximum of (E - E_bulk)/A along the path is returned."""
    try:
        (p_end, shift) = _SF_PATHS[plane]
    except KeyError:
        raise ValueError(f"unknown stacking-fault plane {plane!r}; known: {', '.join(_SF_PATHS)}") from None
    s = sizes(quick)
    b = _bulk(calculator, quick, bulk)
    n = points or s.sf_points
    sf = _sf_cell(b.a0, s.sf_repeat)
    sf.calc = calculator
    e_bulk = len(sf) * b.energy_per_atom
    sf.positions[:, 2] += shift
    sf.wrap()
    a1, a2 = sf.cell.array[0].copy(), sf.cell.array[1].copy()
    area = cell_area(sf)
    sf.set_constraint(FixCartesian(range(len(sf)), mask=(True, True, False)))
    c0 = sf.cell.array[2].copy()
    energies = []
    for t in np.linspace(0.0, 1.0, n):
        cell = sf.cell.array.copy()
        cell[2] = c0 + t * (p_end[0] * a1 + p_end[1] * a2)
        cell[2, 2] = sf.cell.array[2, 2]  # start from the previous point's relaxed c_z
        sf.set_cell(cell, scale_atoms=False)
        energy = relax_cell(sf, fmax=s.fmax, mask=[0, 0, 1, 0, 0, 0])
        energies.append((energy - e_bulk) / area)
    return float(max(energies))


# ---------------------------------------------------------------- all


def compute_all(calculator: Any, quick: bool = False,
                progress: Optional[Callable[[str, float, float], None]] = None,
                failures: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Every property of :data:`UNITS`, in that order (A, eV, eV/A^2, GPa).

    ``progress(key, value, seconds)`` is called after each property (elastic
    constants report once per constant, with the time of the set). A recipe that
    fails (a relaxation that does not converge, a calculator error) raises, unless
    a ``failures`` dict is given: then its properties are NaN and
    ``failures[key]`` holds the error message, and the other recipes still run
    (a poor potential may fail some of them; without the bulk, all fail)."""
    out: Dict[str, float] = {}
    b: Optional[SiBulk] = None

    def step(keys, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - recorded per property when asked to
            if failures is None:
                raise
            value = {key: float("nan") for key in keys}
            for key in keys:
                failures[key] = f"{type(exc).__name__}: {exc}"
        values = value if isinstance(value, dict) else {keys[0]: value}
        for key in keys:
            out[key] = float(values[key])
            if progress is not None:
                progress(key, out[key], time.perf_counter() - t0)

    def bulk() -> float:
        nonlocal b
        b = si_bulk(calculator, quick)
        return b.a0

    def missing():  # everything else is built at the bulk's a0
        raise RuntimeError("no relaxed bulk (the a0 recipe failed)")

    step(["a0"], bulk)
    kw = dict(quick=quick, bulk=b)
    recipes = [
        (["cohesive_energy"], lambda: cohesive_energy(calculator, **kw)),
        (["bulk_modulus", "C11", "C12", "C44", "C44_unrelaxed"], lambda: elastic_constants(calculator, **kw)),
        (["surface_100_2x1"], lambda: surface_100_2x1(calculator, **kw)),
        (["surface_110"], lambda: surface_110(calculator, **kw)),
        (["surface_111_shuffle"], lambda: surface_111_shuffle(calculator, **kw)),
        (["surface_111_das_3x3"], lambda: surface_111_das_3x3(calculator, **kw)),
        (["vacancy"], lambda: vacancy_formation(calculator, **kw)),
        (["interstitial_tetrahedral"], lambda: interstitial_tetrahedral(calculator, **kw)),
        (["interstitial_hexagonal"], lambda: interstitial_hexagonal(calculator, **kw)),
        (["interstitial_dumbbell"], lambda: interstitial_dumbbell(calculator, **kw)),
        (["vacancy_migration"], lambda: vacancy_migration(calculator, **kw)),
        (["gb_sigma3_112"], lambda: gb_sigma3_112(calculator, **kw)),
        (["usf_shuffle"], lambda: unstable_stacking_fault(calculator, plane="shuffle", **kw)),
        (["usf_glide"], lambda: unstable_stacking_fault(calculator, plane="glide", **kw)),
    ]
    for keys, fn in recipes:
        step(keys, fn if b is not None else missing)
    return {key: out[key] for key in PROPERTY_KEYS}
