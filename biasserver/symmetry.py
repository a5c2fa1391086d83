"""Atom-centred symmetry functions (Behler G2, G4, G5): the G-metaD collective variable.

Definitions (design.md section 3), with fc(R) = 0.5 [cos(pi R / Rc) + 1] for R < Rc:

- G2_i = sum_j exp(-eta (R_ij - Rs)^2) fc(R_ij), per neighbour element;
- G4_i = 2^(1-zeta) sum_{j<k} (1 + lambda cos theta_ijk)^zeta
  exp(-eta (R_ij^2 + R_ik^2 + R_jk^2)) fc(R_ij) fc(R_ik) fc(R_jk), per unordered
  neighbour-element pair;
- G5: as G4 without the R_jk^2 term and without fc(R_jk).

Lengths are in angstrom, eta in A^-2, Rs in angstrom. Values and their analytic
derivatives come from the C kernels (ckernels/symmetry.c).

Parameter files follow SIMPLE-NN: ``params_XX`` files (one per centre element,
lines ``TYPE I1 I2 RC C1 C2 C3`` with 1-based element indices in the order of the
mapping given to :meth:`SymmetryFunctions.read`) and the LAMMPS-side
``potential_saved`` file (:meth:`SymmetryFunctions.read_potential_saved`).
"""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from . import kernels
from .kernels import NeighbourList

#: eta values (A^-2) of the 8 radial functions of the method's Si example (Rs = 0).
DEFAULT_G2_ETAS = (0.003214, 0.035711, 0.071421, 0.124987, 0.214264, 0.357106, 0.714213, 1.428426)
#: eta (A^-2), zeta and lambda values of the 18 angular functions of that example.
DEFAULT_G4_ETAS = (0.000357, 0.028569, 0.089277)
DEFAULT_G4_ZETAS = (1.0, 2.0, 4.0)
DEFAULT_G4_LAMBDAS = (-1.0, 1.0)


class ParameterFileError(ValueError):
    """A symmetry-function parameter file is malformed; the message names file and line."""


def _check_element(symbol: str, where: str) -> str:
    if symbol not in atomic_numbers or symbol == "X":
        raise ParameterFileError(f"{where}: unknown element symbol {symbol!r}")
    return symbol


def _row(kind: int, e1: int, e2: int, cutoff: float, c1: float, c2: float, c3: float,
         where: str) -> list[float]:
    """One validated parameter row (kind, e1, e2, Rc, c1, c2, c3), 0-based elements."""
    if kind not in (2, 4, 5):
        raise ParameterFileError(f"{where}: symmetry-function type must be 2, 4 or 5, got {kind}")
    if not (cutoff > 0 and np.isfinite(cutoff)):
        raise ParameterFileError(f"{where}: cutoff must be > 0 angstrom, got {cutoff}")
    if not all(np.isfinite([c1, c2, c3])):
        raise ParameterFileError(f"{where}: parameters must be finite numbers")
    if c1 < 0:
        raise ParameterFileError(f"{where}: eta must be >= 0, got {c1}")
    if kind == 2:
        return [2, e1, -1, cutoff, c1, c2, 0.0]
    if c2 <= 0:
        raise ParameterFileError(f"{where}: zeta must be > 0, got {c2}")
    if c3 not in (-1.0, 1.0):
        raise ParameterFileError(f"{where}: lambda must be -1 or +1, got {c3}")
    a, b = sorted((e1, e2))
    return [kind, a, b, cutoff, c1, c2, c3]


@dataclass(frozen=True)
class Descriptors:
    """Symmetry-function values and derivatives of one structure.

    Sparse derivative form: for every element e, ``derivatives[e][p]`` (F_e x 3)
    is dG_c / dR_ij of the centre c = ``indices[e][pair_centre[e][p]]`` with respect
    to the pair vector R_ij of neighbour-list entry ``pair_index[e][p]`` (j =
    ``neighbours.second[pair_index[e][p]]``). Hence dG_c/dr_j is the sum of the
    rows of pairs whose neighbour is j (images fold onto their atom) and
    dG_c/dr_c = -(sum of all rows of c). Units: G is dimensionless, derivatives
    are per angstrom.
    """

    elements: tuple[str, ...]
    species: np.ndarray                 # (N,) element index of each atom
    indices: dict[str, np.ndarray]      # element -> (n_e,) atom indices
    values: dict[str, np.ndarray]       # element -> (n_e, F_e)
    neighbours: NeighbourList
    derivatives: dict[str, np.ndarray]  # element -> (P_e, F_e, 3)
    pair_index: dict[str, np.ndarray]   # element -> (P_e,) rows of the neighbour list
    pair_centre: dict[str, np.ndarray]  # element -> (P_e,) centre position in indices[e]

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    def forces_virial(self, gradients: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Forces and virial of an energy E(G) given dE/dG_i for every centre.

        gradients: element -> (n_e, F_e) array of dE/dG_i in eV. Returns forces
        -dE/dr (N, 3) in eV/A and the virial -dE/d(strain) (3, 3) in eV (i-PI's
        convention, -stress x volume).
        """
        forces = np.zeros((self.n_atoms, 3))
        virial = np.zeros((3, 3))
        for element, grad in gradients.items():
            deriv = self.derivatives.get(element)
            if deriv is None or len(deriv) == 0:
                continue
            kernels.forces_virial(self._block_offset(element), deriv, grad, self.pair_index[element],
                                  self.neighbours, forces, virial)
        return forces, virial

    def _block_offset(self, element: str) -> np.ndarray:
        """(n_e + 1,) offsets: the derivative blocks of the c-th centre of ``element`` are
        rows _block_offset[c]:_block_offset[c + 1]."""
        return np.searchsorted(self.pair_centre[element], np.arange(len(self.indices[element]) + 1))

    def jacobian(self, element: str, centre: int, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Dense dG/dr of one centre (the ``centre``-th atom of ``element``).

        Returns (atoms (M,), J (F_e, M, 3)) with J in 1/angstrom, the centre first.

        images=False (the physical Jacobian): one column block per distinct atom G
        depends on; the rows of all periodic images of an atom are summed, and
        images of the centre itself fold onto the centre.

        images=True (the ghost-atom convention of LAMMPS codes): the centre with
        its images held fixed, -(sum of all pair rows), then one block per
        neighbour-list entry, so every periodic image of an atom, the centre's own
        images included, is a column block of its own (``atoms`` then repeats
        indices). Both agree when no atom has two images within the cutoff (all
        cell widths at least twice the cutoff).
        """
        rows = np.flatnonzero(self.pair_centre[element] == centre)
        deriv = self.derivatives[element][rows]
        neighbour = self.neighbours.second[self.pair_index[element][rows]]
        atom = int(self.indices[element][centre])
        if images:
            jac = np.concatenate([-deriv.sum(axis=0, keepdims=True), deriv]).transpose(1, 0, 2)
            return np.concatenate([[atom], neighbour]), np.ascontiguousarray(jac)
        atoms, inverse = np.unique(np.concatenate([[atom], neighbour]), return_inverse=True)
        jac = np.zeros((deriv.shape[1], len(atoms), 3))
        np.add.at(jac, (slice(None), inverse[1:]), deriv.transpose(1, 0, 2))
        jac[:, inverse[0]] -= deriv.sum(axis=0)
        order = np.argsort(atoms != atom, kind="stable")  # centre first
        return atoms[order], jac[:, order]

    def jacobian_products(self, element: str, images: bool = False) -> np.ndarray:
        """J J^T (n_e, F_e, F_e) in 1/angstrom^2 for every centre of ``element``, with
        J the dense dG/dr of :meth:`jacobian` (same ``images`` convention), from the C
        kernel (exactly symmetric)."""
        return kernels.jacobian_products(self._block_offset(element), self.derivatives[element], images,
                                         self.indices[element], self.pair_index[element],
                                         self.neighbours, self.n_atoms)

    def strain_derivatives(self, element: str) -> np.ndarray:
        """dG_i/d(strain) (n_e, F_e, 3, 3) for every centre of ``element``."""
        deriv = self.derivatives[element]
        vectors = self.neighbours.vectors[self.pair_index[element]]
        out = np.zeros((len(self.indices[element]), deriv.shape[1], 3, 3))
        np.add.at(out, self.pair_centre[element], np.einsum("pfa,pb->pfab", deriv, vectors))
        return out


class SymmetryFunctions:
    """A set of symmetry functions per centre element.

    elements: the element symbols, in the order that defines 1-based type indices
    of SIMPLE-NN files; tables: element -> (F_e, 7) rows ``kind, e1, e2, Rc, c1, c2,
    c3`` with 0-based neighbour-element indices (e2 = -1 for G2), Rc in angstrom.
    """

    def __init__(self, elements: Sequence[str], tables: Mapping[str, np.ndarray]):
        self.elements: tuple[str, ...] = tuple(elements)
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f"duplicate elements in {self.elements}")
        for e in self.elements:
            _check_element(e, "elements")
        missing = [e for e in self.elements if e not in tables]
        if missing:
            raise ValueError(f"no symmetry functions given for element(s) {missing}")
        self.tables: dict[str, np.ndarray] = {}
        for e in self.elements:
            table = np.array(tables[e], dtype=np.float64).reshape(-1, kernels.PARAM_COLUMNS)
            if len(table) == 0:
                raise ValueError(f"element {e} has no symmetry functions")
            used = table[:, 1:3].astype(int)
            if used.max() >= len(self.elements) or used[:, 0].min() < 0:
                raise ValueError(f"symmetry functions of {e} name an element index outside {self.elements}")
            if not np.all(table[:, 3] > 0):
                raise ValueError(f"cutoff <= 0 in the symmetry functions of {e}")
            self.tables[e] = table
        self.cutoff: float = max(float(t[:, 3].max()) for t in self.tables.values())

    # -- constructors -----------------------------------------------------
    @classmethod
    def read(cls, files: Mapping[str, str | os.PathLike]) -> "SymmetryFunctions":
        """Read SIMPLE-NN ``params_XX`` files: {element: path}, in type-index order.

        Each non-blank line is ``TYPE I1 I2 RC C1 C2 C3`` (G2: C1 = eta, C2 = Rs,
        the neighbour element I1, I2 ignored as SIMPLE-NN does, or I2 when I1 is 0;
        G4/G5: C1 = eta, C2 = zeta, C3 = lambda, I1 and I2 in any order); I1, I2 are
        1-based indices into the mapping's element order. Lines starting with # are
        comments.
        """
        elements = [_check_element(e, "params mapping") for e in files]
        tables = {}
        for element, path in files.items():
            rows = []
            with open(path) as handle:
                for lineno, line in enumerate(handle, 1):
                    text = line.split("#")[0].strip()
                    if not text:
                        continue
                    where = f"{path}, line {lineno}"
                    words = text.split()
                    if len(words) != 7:
                        raise ParameterFileError(
                            f"{where}: expected 7 columns 'TYPE I1 I2 RC C1 C2 C3', got {len(words)}: {text!r}")
                    try:
                        kind, i1, i2 = (int(w) for w in words[:3])
                        rc, c1, c2, c3 = (float(w) for w in words[3:])
                    except ValueError:
                        raise ParameterFileError(f"{where}: not a number in {text!r}") from None
                    if kind not in (2, 4, 5):
                        raise ParameterFileError(f"{where}: symmetry-function type must be 2, 4 or 5, got {kind}")
                    if kind == 2:
                        # SIMPLE-NN reads a G2's neighbour from I1 and ignores I2; a
                        # line written as "2 0 I ..." (order swapped) names it in I2
                        if i1 == 0 and i2 == 0:
                            raise ParameterFileError(f"{where}: G2 needs a non-zero element index")
                        i1, i2 = (i1 if i1 != 0 else i2), 0
                    for i in (i1,) if kind == 2 else (i1, i2):
                        if not 1 <= i <= len(elements):
                            raise ParameterFileError(
                                f"{where}: element index {i} outside 1..{len(elements)} ({', '.join(elements)})")
                    rows.append(_row(kind, i1 - 1, i2 - 1, rc, c1, c2, c3, where))
            if not rows:
                raise ParameterFileError(f"{path}: no symmetry functions found")
            tables[element] = rows
        return cls(elements, tables)

    @classmethod
    def read_potential_saved(cls, path: str | os.PathLike) -> "SymmetryFunctions":
        """Read the symmetry functions of a SIMPLE-NN / LAMMPS ``potential_saved`` file.

        Format: ``ELEM_LIST El1 El2 ...``; per element ``POT El RC``, ``SYM n`` and n
        lines ``TYPE RC C1 C2 C3 El1 [El2]``. Everything after those n lines until
        the next ``POT`` (scale vectors, NET, LAYER blocks) is skipped.
        """
        elements: list[str] | None = None
        tables: dict[str, list] = {}
        with open(path) as handle:
            lines = handle.readlines()
        lineno = 0
        while lineno < len(lines):
            words = lines[lineno].split()
            lineno += 1
            where = f"{path}, line {lineno}"
            if not words:
                continue
            if words[0] == "ELEM_LIST":
                elements = [_check_element(w, where) for w in words[1:]]
                if not elements:
                    raise ParameterFileError(f"{where}: ELEM_LIST names no element")
            elif words[0] == "POT":
                if elements is None:
                    raise ParameterFileError(f"{where}: POT before ELEM_LIST")
                if len(words) < 2 or words[1] not in elements:
                    raise ParameterFileError(f"{where}: POT must name an element of ELEM_LIST {elements}")
                element = words[1]
                sym = lines[lineno].split() if lineno < len(lines) else []
                lineno += 1
                if len(sym) != 2 or sym[0] != "SYM" or not sym[1].isdigit():
                    raise ParameterFileError(f"{path}, line {lineno}: expected 'SYM n' after POT {element}")
                rows = []
                for _ in range(int(sym[1])):
                    if lineno >= len(lines):
                        raise ParameterFileError(f"{path}: file ends inside the SYM block of {element}")
                    text = lines[lineno].strip()
                    lineno += 1
                    where = f"{path}, line {lineno}"
                    w = text.split()
                    if len(w) not in (6, 7):
                        raise ParameterFileError(f"{where}: expected 'TYPE RC C1 C2 C3 El1 [El2]', got {text!r}")
                    try:
                        kind = int(w[0])
                        rc, c1, c2, c3 = (float(x) for x in w[1:5])
                    except ValueError:
                        raise ParameterFileError(f"{where}: not a number in {text!r}") from None
                    names = w[5:]
                    for name in names:
                        if name not in elements:
                            raise ParameterFileError(f"{where}: element {name!r} not in ELEM_LIST {elements}")
                    if (kind == 2) != (len(names) == 1):
                        raise ParameterFileError(f"{where}: G{kind} needs {'one' if kind == 2 else 'two'} element name(s)")
                    e1 = elements.index(names[0])
                    e2 = elements.index(names[1]) if len(names) > 1 else -1
                    rows.append(_row(kind, e1, e2, rc, c1, c2, c3, where))
                tables[element] = rows
        if elements is None:
            raise ParameterFileError(f"{path}: no ELEM_LIST line")
        missing = [e for e in elements if e not in tables]
        if missing:
            raise ParameterFileError(f"{path}: no POT/SYM block for {missing}")
        return cls(elements, tables)

    @classmethod
    def default(cls, elements: Sequence[str], cutoff: float = 6.0) -> "SymmetryFunctions":
        """The method's Si set for every centre: 8 G2 per neighbour element and 18 G4
        per unordered neighbour-element pair (26 functions for one element, 70 per
        centre for two), all with cutoff ``cutoff`` angstrom."""
        if not (cutoff > 0 and np.isfinite(cutoff)):
            raise ValueError(f"cutoff must be > 0 angstrom, got {cutoff}")
        elements = list(elements)
        rows = []
        for e in range(len(elements)):
            rows += [[2, e, -1, cutoff, eta, 0.0, 0.0] for eta in DEFAULT_G2_ETAS]
        for e1, e2 in itertools.combinations_with_replacement(range(len(elements)), 2):
            for eta, zeta, lam in itertools.product(DEFAULT_G4_ETAS, DEFAULT_G4_ZETAS, DEFAULT_G4_LAMBDAS):
                rows.append([4, e1, e2, cutoff, eta, zeta, lam])
        return cls(elements, {e: rows for e in elements})

    # -- description ------------------------------------------------------
    def size(self, element: str) -> int:
        """Number of functions of a centre of ``element``."""
        return len(self.tables[element])

    def fingerprint(self) -> str:
        """A short hash of elements and parameters: tells whether two sets are the same."""
        digest = hashlib.sha1(repr(self.elements).encode())
        for e in self.elements:
            digest.update(np.ascontiguousarray(self.tables[e]).tobytes())
        return digest.hexdigest()[:16]

    def write_params(self, directory: str | os.PathLike) -> dict[str, str]:
        """Write SIMPLE-NN ``params_XX`` files into ``directory``; returns {element: path}."""
        paths = {}
        for e in self.elements:
            path = os.path.join(directory, f"params_{e}")
            with open(path, "w") as handle:
                for kind, e1, e2, rc, c1, c2, c3 in self.tables[e]:
                    numbers = " ".join(repr(float(x)) for x in (rc, c1, c2, c3))
                    handle.write(f"{int(kind)} {int(e1) + 1} {int(e2) + 1} {numbers}\n")
            paths[e] = path
        return paths

    def __repr__(self) -> str:
        sizes = ", ".join(f"{e}: {self.size(e)}" for e in self.elements)
        return f"SymmetryFunctions({sizes}; cutoff {self.cutoff} A)"

    # -- evaluation -------------------------------------------------------
    def species(self, atoms: Atoms) -> np.ndarray:
        """(N,) element index of every atom; a clear error for an element not in the set."""
        index = {e: k for k, e in enumerate(self.elements)}
        symbols = atoms.get_chemical_symbols()
        try:
            return np.array([index[s] for s in symbols], dtype=np.int32)
        except KeyError:
            bad = next(k for k, s in enumerate(symbols) if s not in index)
            raise ValueError(
                f"atom {bad} is {symbols[bad]}, which has no symmetry functions "
                f"(known elements: {', '.join(self.elements)})") from None

    def neighbour_list(self, atoms: Atoms) -> NeighbourList:
        """Full neighbour list of ``atoms`` within the largest cutoff."""
        return kernels.neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff)

    def values(self, atoms: Atoms, elements: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """element -> (n_e, F_e) values, atoms in the order they appear in ``atoms``.

        elements: compute only centres of these elements (default: all); the
        others get (0, F_e) arrays.
        """
        return self._evaluate(atoms, False, elements).values

    def compute(self, atoms: Atoms, elements: Sequence[str] | None = None) -> Descriptors:
        """Values, analytic derivatives and what the virial needs (see :class:`Descriptors`),
        for the centres of ``elements`` (default: all)."""
        return self._evaluate(atoms, True, elements)

    def _evaluate(self, atoms: Atoms, derivatives: bool, elements: Sequence[str] | None) -> Descriptors:
        species = self.species(atoms)
        neighbours = self.neighbour_list(atoms)
        if len(neighbours.first) and neighbours.distances.min() < 1e-8:
            p = int(np.argmin(neighbours.distances))
            raise ValueError(f"atoms {neighbours.first[p]} and {neighbours.second[p]} sit on the same "
                             "position (or on each other's periodic image)")
        wanted = set(self.elements if elements is None else elements)
        indices, values, derivs, pair_index, pair_centre = {}, {}, {}, {}, {}
        for k, e in enumerate(self.elements):
            centres = np.flatnonzero(species == k).astype(np.int32)
            if e not in wanted:
                centres = centres[:0]
            indices[e] = centres
            vals, deriv, pairs = kernels.symmetry_functions(
                centres, species, neighbours, self.tables[e], derivatives)
            values[e] = vals
            if derivatives:
                counts = neighbours.offset[centres + 1] - neighbours.offset[centres]
                derivs[e] = deriv
                pair_index[e] = pairs
                pair_centre[e] = np.repeat(np.arange(len(centres)), counts)
        return Descriptors(self.elements, species, indices, values, neighbours,
                           derivs, pair_index, pair_centre)
