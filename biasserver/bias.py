"""The G-metaD bias: Gaussian hills on every atom's symmetry-function vector.

    U_i = c_e * sum_s h_s exp(-1/2 (G_i - mu_s)^T A_s (G_i - mu_s)),   E_bias = sum_i U_i

One set of hills per element e; every atom of e feels all hills of e, scaled by
the element's coefficient c_e (0: the element is neither biased nor deposits).
Energies are in eV, forces in eV/A, the virial in eV with i-PI's sign
(-stress x volume). See design.md section 4 for the method.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms

from . import hillsfile
from .hills import DEFAULT_PRUNE_TOLERANCE, HillSet
from .hillsfile import HillRecord, HillsFileError
from .symmetry import Descriptors, SymmetryFunctions
from .units import KB
from .walls import wall_from_dict


@dataclass
class HillCandidates:
    """Hills one walker deposits on atoms of one element at one step, before they
    are applied: centres (n, D) G_i, metrics (one (D, D) matrix, a scalar, or None
    for an atom without neighbours), the atoms' indices and, for adaptive hills,
    the covariances (the metrics' inverses, which merging uses; None: computed
    when needed)."""

    element: str
    centres: np.ndarray
    metrics: list
    atoms: np.ndarray
    covariances: list | None = None

COVARIANCES = ("adaptive", "isotropic")
#: conventions for J in the adaptive covariance (see GMetaDBias)
JACOBIANS = ("folded", "images")

log = logging.getLogger("gmetad.bias")


def _check_finite(atoms: Atoms) -> None:
    """A clear error for NaN or infinite positions or cell (checked even when no hill acts)."""
    if not np.all(np.isfinite(atoms.positions)):
        bad = int(np.argwhere(~np.isfinite(atoms.positions))[0, 0])
        raise ValueError(f"position of atom {bad} is not finite: {atoms.positions[bad]}")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise ValueError(f"the cell is not finite: {atoms.cell.array.tolist()}")


def _mahalanobis2(hills: HillSet, index: int, points: np.ndarray) -> np.ndarray:
    """q = (g - mu_s)^T A_s (g - mu_s) of hill ``index`` at every row g of ``points``."""
    diff = points - hills.centres[index]
    if hills.adaptive:
        return np.einsum("sd,sd->s", diff, diff @ hills.metrics[index])
    return hills.metrics[index] * np.einsum("sd,sd->s", diff, diff)


def _best_hill(nearest: int, nearest_q: float, touched: Sequence[int], q: np.ndarray) -> tuple[int, float]:
    """The merge candidate of smallest q and that q: the kernel's ``nearest`` hill
    before the deposition (-1: none) with ``nearest_q``, unless it was touched since,
    and the ``touched`` hills (added or merged earlier in the deposition) with their
    current q ``q``; ties go to the first touched hill and then to the lower index.
    (-1, inf) when there is none."""
    best, best_q = (nearest, nearest_q) if nearest >= 0 and nearest not in touched else (-1, np.inf)
    if len(touched):
        k = int(np.argmin(q))
        if q[k] < best_q or (q[k] == best_q and touched[k] < best):
            best, best_q = int(touched[k]), float(q[k])
    return best, best_q


class GMetaDBias:
    """Metadynamics bias in atom-centred symmetry-function space.

    Parameters
    ----------
    symmetry_functions: the collective variable.
    height: hill height h in eV (the initial height when well-tempered).
    width: adaptive covariance: sigma in angstrom, an isotropic Cartesian
        displacement mapped into G space through the Jacobian J = dG_i/dR;
        isotropic covariance: sigma_G in G units.
    stride: deposit every ``stride`` calls of :meth:`step` (never at step 0).
    species: element -> coefficient c_e >= 0; elements not named get 0.
    covariance: "adaptive" (S = sigma^2 J J^T + reg * lambda_max * I) or "isotropic"
        (S = sigma_G^2 I).
    regularization: reg, caps the condition number of adaptive covariances.
    jacobian: the columns of J in the adaptive covariance. "folded" (default): the
        physical Jacobian, periodic images of an atom summed onto the atom;
        "images": every periodic image within the cutoff is a column of its own,
        as with the ghost atoms of the method's original LAMMPS code (reproduces
        its hills). They differ only in cells narrower than twice the cutoff;
        forces are exact derivatives of the bias either way.
    well_tempered: bias temperature Delta T in K: a new hill's height is
        h exp(-U(G_i) / (k_B Delta T)); None for plain metadynamics.
    compression: Mahalanobis distance below which a new hill is merged into the
        nearest existing one (None: never merge).
    max_hills: cap on the hills of each element (None: no cap). Once an element
        holds this many, every new hill is merged into its nearest hill (as
        compression merges: :meth:`HillSet.merge_into`), so the cost of a step
        stops growing. Nearest:
        smallest (G - mu_s)^T A_s (G - mu_s) among the hill nearest before the
        deposition and the hills added or merged earlier in the same deposition.
    walls: wall objects (:mod:`biasserver.walls`) or their dict forms.
    prune_tolerance: hills weighing less than this fraction of their height at a
        query are skipped (a rigorous bound; 0 disables pruning).
    hills_file: if given, every deposition is appended to this hills file.
    """

    def __init__(self, symmetry_functions: SymmetryFunctions, height: float, width: float,
                 stride: int, species: Mapping[str, float], covariance: str = "adaptive",
                 regularization: float = 1e-4, jacobian: str = "folded",
                 well_tempered: float | None = None,
                 compression: float | None = None, max_hills: int | None = None,
                 walls: Sequence | None = None,
                 prune_tolerance: float = DEFAULT_PRUNE_TOLERANCE,
                 hills_file: str | os.PathLike | None = None):
        if not height > 0:
            raise ValueError(f"height must be > 0 eV, got {height}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if not 0 < regularization < 1:
            raise ValueError(f"regularization must be in (0, 1), got {regularization}")
        if jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
        if well_tempered is not None and not well_tempered > 0:
            raise ValueError(f"well_tempered (bias temperature) must be > 0 K, got {well_tempered}")
        if compression is not None and not compression > 0:
            raise ValueError(f"compression threshold must be > 0, got {compression}")
        if max_hills is not None and (int(max_hills) != max_hills or max_hills < 1):
            raise ValueError(f"max_hills must be a positive integer or None, got {max_hills}")
        if not 0 <= prune_tolerance < 1:
            raise ValueError(f"prune_tolerance must be in [0, 1), got {prune_tolerance}")
        for element, coefficient in species.items():
            if element not in symmetry_functions.elements:
                raise ValueError(f"species names {element!r}, which has no symmetry functions "
                                 f"(elements: {', '.join(symmetry_functions.elements)})")
            if not coefficient >= 0:
                raise ValueError(f"coefficient of {element} must be >= 0, got {coefficient}")
        self.symmetry_functions = symmetry_functions
        self.height, self.width, self.stride = float(height), float(width), int(stride)
        self.species = {e: float(species.get(e, 0.0)) for e in symmetry_functions.elements}
        self.covariance, self.regularization = covariance, float(regularization)
        self.jacobian = jacobian
        self.well_tempered = None if well_tempered is None else float(well_tempered)
        self.compression = None if compression is None else float(compression)
        self.max_hills = None if max_hills is None else int(max_hills)
        self.walls = [wall_from_dict(w) if isinstance(w, dict) else w for w in (walls or [])]
        #: the structure this bias acts on, {"formula": ..., "pbc": [...]}, stored in the
        #: hills file so that a run refuses hills deposited on another system
        self.system: dict | None = None
        self.prune_tolerance = float(prune_tolerance)
        self.hills = {e: HillSet(symmetry_functions.size(e), covariance == "adaptive", prune_tolerance)
                      for e in symmetry_functions.elements}
        #: number of :meth:`step` calls so far (the MD step of the next call)
        self.step_count = 0
        #: energy terms of the last evaluation, in eV: {"hills": ..., "walls": ...}
        self.last_terms: dict[str, float] = {}
        self._writer = None
        if hills_file is not None:
            self.record_hills(hills_file)

    # -- description --------------------------------------------------------
    @property
    def n_hills(self) -> int:
        """Total number of hills over all elements."""
        return sum(len(h) for h in self.hills.values())

    def parameters(self) -> dict:
        """The bias parameters, as stored in a hills file header."""
        return {"height": self.height, "width": self.width, "stride": self.stride,
                "species": self.species, "covariance": self.covariance,
                "regularization": self.regularization, "jacobian": self.jacobian,
                "well_tempered": self.well_tempered,
                "compression": self.compression, "max_hills": self.max_hills,
                "prune_tolerance": self.prune_tolerance,
                "walls": [w.to_dict() for w in self.walls]}

    def _symmetry_dict(self) -> dict:
        sf = self.symmetry_functions
        return {"elements": list(sf.elements), "tables": {e: sf.tables[e].tolist() for e in sf.elements}}

    def _header(self) -> str:
        return hillsfile.header(self._symmetry_dict(), self.parameters(),
                                {e: self.symmetry_functions.size(e) for e in self.symmetry_functions.elements},
                                self.system)

    # -- evaluation ---------------------------------------------------------
    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Bias energy (eV), forces (N, 3) eV/A and virial (3, 3) eV at ``atoms``."""
        _check_finite(atoms)
        return self._evaluate(atoms, self._descriptors(atoms) if self.acting() else None)

    def acting(self) -> bool:
        """Whether any hill acts on any atom (else the symmetry functions are not needed)."""
        return any(c > 0 and len(self.hills[e]) for e, c in self.species.items())

    def _descriptors(self, atoms: Atoms) -> Descriptors:
        """Symmetry functions of the biased atoms only (c_e > 0): the others cost nothing."""
        return self.symmetry_functions.compute(atoms, [e for e, c in self.species.items() if c > 0])

    def atom_energies(self, atoms: Atoms) -> np.ndarray:
        """U_i (eV) of every atom from the hills alone (walls excluded)."""
        values = self.symmetry_functions.values(atoms, [e for e, c in self.species.items() if c > 0])
        species = self.symmetry_functions.species(atoms)
        energies = np.zeros(len(atoms))
        for k, e in enumerate(self.symmetry_functions.elements):
            if self.species[e] > 0 and len(self.hills[e]):
                energies[species == k] = self.species[e] * self.hills[e].evaluate(values[e], False)[0]
        return energies

    def _evaluate(self, atoms: Atoms, desc: Descriptors | None,
                  nearest: dict | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """Hills (when ``desc`` is given) plus walls. ``nearest``: a dict that receives,
        per element, (V, nearest hill, its q) at every centre (what a deposition at
        ``desc`` needs, from the same pass over the hills)."""
        energy = 0.0
        forces, virial = np.zeros((len(atoms), 3)), np.zeros((3, 3))
        if desc is not None:
            gradients = {}
            for e, coefficient in self.species.items():
                if coefficient > 0 and len(self.hills[e]) and len(desc.values[e]):
                    if nearest is None:
                        v, dv, _ = self.hills[e].evaluate(desc.values[e])
                    else:
                        v, dv, _, (index, q) = self.hills[e].evaluate(desc.values[e], nearest=True)
                        nearest[e] = (v, index, q)
                    energy += coefficient * float(v.sum())
                    gradients[e] = coefficient * dv
            forces, virial = desc.forces_virial(gradients)
        wall_energy = 0.0
        for wall in self.walls:
            e_w, f_w, v_w = wall.energy_forces(atoms)
            wall_energy += e_w
            forces += f_w
            virial += v_w
        self.last_terms = {"hills": energy, "walls": wall_energy}
        return energy + wall_energy, forces, virial

    def step(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """The per-MD-step entry point: energy, forces and virial at ``atoms`` (as
        :meth:`energy_forces`), then a deposition when the step is a positive
        multiple of ``stride``. The returned forces are those before the deposition."""
        _check_finite(atoms)
        deposit = self.deposits_at(self.step_count)
        desc = self._descriptors(atoms) if deposit or self.acting() else None
        nearest = {} if deposit and self._needs_nearest() else None
        result = self._evaluate(atoms, desc, nearest)
        if deposit:
            self.apply_candidates(self._candidates(desc), nearest)
        self.step_count += 1
        return result

    def deposits_at(self, step: int) -> bool:
        """Whether hills are deposited at MD step ``step``: positive multiples of stride."""
        return step > 0 and step % self.stride == 0

    def deposit(self, atoms: Atoms) -> int:
        """Deposit one hill per biased atom at its current G_i; returns the number
        of hills added (merged hills are not new)."""
        return self._deposit(self._descriptors(atoms))

    def _deposit(self, desc: Descriptors) -> int:
        return self.apply_candidates(self._candidates(desc))[0]

    def _needs_nearest(self) -> bool:
        """Whether a deposition looks at the hills already there (merging, well-tempered)."""
        return self.compression is not None or self.max_hills is not None or self.well_tempered is not None

    # -- deposition in two halves (several walkers feeding one bias) ---------
    def hill_candidates(self, atoms: Atoms) -> list[HillCandidates]:
        """The hills ``atoms`` would deposit now, per biased element, before they
        meet the existing hills: centres G_i and metrics A_i (the walker's own
        half of a deposition; :meth:`apply_candidates` is the shared half)."""
        _check_finite(atoms)
        return self._candidates(self._descriptors(atoms))

    def _candidates(self, desc: Descriptors) -> list[HillCandidates]:
        out = []
        for e, coefficient in self.species.items():
            if coefficient == 0 or len(desc.values[e]) == 0:
                continue
            values = np.array(desc.values[e], dtype=np.float64)
            metrics, covariances = self._metrics(desc, e)
            out.append(HillCandidates(e, values, metrics, np.asarray(desc.indices[e], dtype=np.int64),
                                      covariances))
        return out

    def apply_candidates(self, candidates: Sequence[HillCandidates],
                         nearest: Mapping[str, tuple] | None = None) -> tuple[int, list[HillRecord]]:
        """Deposit hill candidates at MD step ``step_count``, element group by group
        in the given order: heights (well-tempered: from the bias felt at each centre
        before this group), merges and the hills file as for a single walker.
        ``nearest``: element -> (V, nearest hill, q) at the candidates' centres, from
        an evaluation of the same hills (:meth:`step`); computed here otherwise.
        Returns (hills added, the records written, in order)."""
        added = 0
        records: list[HillRecord] = []
        for group in candidates:
            e = group.element
            hills = self.hills[e]
            heights = np.full(len(group.centres), self.height)
            near_index = near_q = None
            if len(hills) and self._needs_nearest():
                felt, near_index, near_q = nearest[e] if nearest and e in nearest else hills.nearest(group.centres)
                if self.well_tempered is not None:
                    heights = self.height * np.exp(-self.species[e] * felt / (KB * self.well_tempered))
            with hills.deposition():
                added += self._apply_group(group, hills, heights, near_index, near_q, records)
        if self._writer is not None:
            self._writer.append(records)
        return added, records

    def _apply_group(self, group: HillCandidates, hills: HillSet, heights: np.ndarray,
                     near_index: np.ndarray | None, near_q: np.ndarray | None,
                     records: list[HillRecord]) -> int:
        """Add or merge the candidates of one group one after the other (the rule:
        :meth:`_merge_target`); append their records; return the number of hills
        added. ``near_index``, ``near_q``: each candidate's nearest hill before the
        deposition and its q (None: no hills yet).

        The q of the later candidates against a hill added or merged here is
        computed once per change of that hill, for all of them at once (the table
        ``touched_q``), instead of against every such hill again for every candidate."""
        e, values, metrics = group.element, group.centres, group.metrics
        n, added = len(values), 0
        merging = self.compression is not None or self.max_hills is not None
        touched: list[int] = []      # hills added or merged in this deposition, in that order
        column: dict[int, int] = {}  # hill -> its position in touched
        # q of every candidate (row) against each touched hill (column) as that hill is now
        touched_q = np.full((n, n), np.inf) if merging else None
        for c in range(n):
            if metrics[c] is None:
                log.warning("step %d: %s atom %d has no neighbour within the cutoff; no hill for it",
                            self.step_count, e, int(group.atoms[c]))
                continue
            index = None
            if merging:
                best, best_q = _best_hill(-1 if near_index is None else int(near_index[c]),
                                          np.inf if near_q is None else float(near_q[c]),
                                          touched, touched_q[c, : len(touched)])
                index = self._merge_choice(hills, values[c], best, best_q)
            if index is None:
                index = hills.add(values[c], heights[c], metrics[c], self.step_count)
                if group.covariances is not None:
                    hills.remember_covariance(index, group.covariances[c])
                added += 1
            else:
                hills.merge_into(index, values[c], heights[c], metrics[c], self.step_count,
                                 None if group.covariances is None else group.covariances[c])
            if index not in column:
                column[index] = len(touched)
                touched.append(index)
            if merging and c + 1 < n:
                touched_q[c + 1:, column[index]] = _mahalanobis2(hills, index, values[c + 1:])
            records.append(HillRecord(index, self.step_count, e, float(hills.heights[index]),
                                      hills.centres[index].copy(), hills.metrics[index].copy()))
        return added

    def apply_records(self, records: Sequence[HillRecord], where: str = "hill records") -> None:
        """Replay hill records (new hills and merges, as a hills file holds them):
        the bias then holds bit for bit the hills of the bias that wrote them."""
        for lineno, r in enumerate(records, 1):
            hills = self.hills[r.element]
            if r.id == len(hills):
                hills.add(r.centre, r.height, r.metric, r.step)
            elif r.id < len(hills):
                hills.replace(r.id, r.centre, r.height, r.metric, r.step)
            else:
                raise HillsFileError(f"{where}: hill record {lineno} has id {r.id} but only "
                                     f"{len(hills)} {r.element} hills precede it")

    def _metrics(self, desc: Descriptors, element: str):
        """Inverse covariances A of hills deposited at every centre of ``element``
        and, for adaptive hills, the covariances S = A^-1; None for a centre without
        neighbours. S = sigma^2 J J^T + floor I with floor = reg * lambda_max (the
        largest eigenvalue of sigma^2 J J^T, from one batched eigvalsh), A = S^-1
        (one batched inversion). An eigenvalue of J J^T below zero by round-off
        stays in S (it is of order eps lambda_max, floor = reg lambda_max)."""
        n = len(desc.indices[element])
        if self.covariance == "isotropic":
            return [1.0 / self.width**2] * n, None
        jjt = desc.jacobian_products(element, images=self.jacobian == "images")
        cov = self.width**2 * jjt
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        floor = self.regularization * np.maximum(np.linalg.eigvalsh(cov)[:, -1], 0.0)
        isolated = floor <= 0    # G does not depend on the positions: an isolated atom
        diagonal = np.arange(cov.shape[1])
        cov[:, diagonal, diagonal] += floor[:, None]
        cov[isolated] = np.eye(cov.shape[1])   # placeholders, not used
        metric = np.linalg.inv(cov)
        metric = 0.5 * (metric + metric.transpose(0, 2, 1))
        metrics = [None if isolated[c] else metric[c] for c in range(n)]
        covariances = [None if isolated[c] else cov[c] for c in range(n)]
        return metrics, covariances

    def _merge_target(self, hills: HillSet, centre: np.ndarray, nearest: int = -1,
                      nearest_q: float = np.inf, touched: Sequence[int] = ()) -> int | None:
        """The hill a new hill at ``centre`` merges into, or None to add it.

        Candidates: ``nearest`` (the hill of smallest q before this deposition, from
        the kernel; -1 when every hill was pruned, all q > q_cut) with ``nearest_q``,
        and the ``touched`` hills (added or merged earlier in this deposition), whose
        q is computed here; the smallest q wins, ties go to the first touched hill
        and then to the lower index. Merge when the best q is below compression^2,
        or always once the element holds max_hills hills (:meth:`_merge_choice`)."""
        if len(hills) == 0 or (self.compression is None and self.max_hills is None):
            return None
        q = np.array([_mahalanobis2(hills, int(s), centre[None, :])[0] for s in touched])
        best, best_q = _best_hill(int(nearest), float(nearest_q), touched, q)
        return self._merge_choice(hills, centre, best, best_q)

    def _merge_choice(self, hills: HillSet, centre: np.ndarray, best: int, best_q: float) -> int | None:
        """Given the best hill ``best`` (-1: none) and its q among the candidates of
        :meth:`_merge_target`: the hill to merge into, or None to add the new hill.
        When that hill may not be the nearest of all (the kernel prunes hills with
        q > q_cut) and a merge could follow, every hill is searched."""
        if len(hills) == 0 or (self.compression is None and self.max_hills is None):
            return None
        capped = self.max_hills is not None and len(hills) >= self.max_hills
        far = best < 0 or best_q > hills.q_cut or hills.q_cut <= 0
        if far and (capped or (self.compression is not None and self.compression**2 > hills.q_cut)):
            q = hills.mahalanobis2(centre)
            best = int(np.argmin(q))
            best_q = float(q[best])
        if best < 0:
            return None
        if capped or (self.compression is not None and best_q < self.compression**2):
            return best
        return None

    # -- persistence --------------------------------------------------------
    def _records(self) -> list[HillRecord]:
        return [HillRecord(s, int(h.steps[s]), e, float(h.heights[s]), h.centres[s], h.metrics[s])
                for e, h in self.hills.items() for s in range(len(h))]

    def save(self, path: str | os.PathLike) -> None:
        """Write every hill and the parameters to a hills file (atomically)."""
        hillsfile.write(path, self._header(), self._records())

    def load_hills(self, path: str | os.PathLike) -> None:
        """Replace this bias's hills by those of a hills file written with the same
        symmetry functions and covariance kind; a clear error otherwise."""
        content = hillsfile.read(path)
        if content.symmetry != self._symmetry_dict():
            raise HillsFileError(f"{path}: its symmetry functions differ from this bias's "
                                 f"(file elements {content.symmetry.get('elements')}, "
                                 f"bias elements {list(self.symmetry_functions.elements)})")
        if content.bias.get("covariance") != self.covariance:
            raise HillsFileError(f"{path}: {content.bias.get('covariance')} hills cannot be loaded "
                                 f"into a bias with {self.covariance} covariance")
        self.hills = {e: HillSet(self.symmetry_functions.size(e), self.covariance == "adaptive",
                                 self.prune_tolerance) for e in self.symmetry_functions.elements}
        self.apply_records(content.records, where=os.fspath(path))
        self.step_count = max(r.step for r in content.records) + 1 if content.records else 0

    @classmethod
    def load(cls, path: str | os.PathLike, append: bool = False) -> "GMetaDBias":
        """A bias rebuilt from a hills file: parameters, symmetry functions and hills.

        With append=True, later depositions are appended to the same file, so a
        restarted run continues the record. Energies and forces are bit-identical
        to those of the bias that wrote the file.
        """
        content = hillsfile.read(path)
        try:
            sf = SymmetryFunctions(content.symmetry["elements"], content.symmetry["tables"])
            params = dict(content.bias)
            bias = cls(sf, **params)
        except (KeyError, TypeError, ValueError) as err:
            raise HillsFileError(f"{path}: header does not describe a valid bias: {err}") from None
        bias.system = content.system
        bias.load_hills(path)
        if append:
            bias.record_hills(path)
        return bias

    def last_deposition(self) -> int | None:
        """The MD step of the latest deposition or merge, None without hills."""
        steps = [int(h.steps.max()) for h in self.hills.values() if len(h)]
        return max(steps) if steps else None

    def set_aside_from(self, step: int) -> str | None:
        """Undo the depositions of MD steps >= ``step`` (a restarted run redoes those
        steps): their records move from the hills file being written into a side
        file (:func:`hillsfile.set_aside`) and the hills are reloaded from the rest,
        so merged hills get back their earlier versions. Returns the side file's
        name, or None when nothing was deposited that late."""
        last = self.last_deposition()
        if last is None or last < step:
            return None
        if self._writer is None:
            raise ValueError(f"hills of step {last} >= {step} cannot be set aside: this bias "
                             "writes no hills file")
        path = self._writer.path
        self.close()
        side = hillsfile.set_aside(path, step)
        self.load_hills(path)
        self.record_hills(path)
        return side

    def record_hills(self, path: str | os.PathLike) -> None:
        """Append every later deposition to the hills file ``path`` (created with a
        header when absent; when it exists it must hold this bias's hills)."""
        self.close()
        self._writer = hillsfile.HillsWriter(path, self._header())

    def close(self) -> None:
        """Close the hills file, if one is being written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
