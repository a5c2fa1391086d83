"""Training data: extxyz frames with energies, forces and stress, and their cached descriptors.

:func:`read_frames` reads any extxyz file (the recorder's, or another tool's) and
checks that every frame has an energy (eV) and forces (eV/A); the keys are
configurable (``energy``/``forces`` by default, i.e. what ASE's single-point
calculator holds; e.g. ``REF_energy``/``REF_forces`` of other tools' files).

Stress is optional and kept per frame with a mask (``has_stress``): a frame
contributes a stress only if its cell is periodic in all three directions and
it carries one. By default (``stress_key`` and ``virial_key`` None) that is
ASE's ``stress`` (eV/A^3, ASE's sign, i.e. -virial / volume; what the recorder
writes for periodic cells and what ASE's single-point calculator holds) when a
frame has it. A ``stress_key`` (eV/A^3, ASE's sign) or ``virial_key`` (eV,
-stress x volume, e.g. ``virial`` of other tools' files) named explicitly is
required in every 3D-periodic frame. Accepted shapes: Voigt (6,) in ASE's order
xx yy zz yz xz xy, (9,) or (3, 3); the tensor is symmetrised.

:func:`frame_descriptors` computes the symmetry functions of every frame once and
caches them on disk in ``cache_dir`` under a name made of the file's content
hash (SHA-256), the symmetry functions' fingerprint, the keys and the cache
version, so editing the file, changing the symmetry functions or a new cache
layout makes a new cache. A cache records what it was made from and is refused
when that disagrees.

Derivatives are stored in the sparse pair form of
:class:`biasserver.symmetry.Descriptors` (float32, about 0.9 MB per Si64 frame):
per element ``deriv`` (P, F, 3) = dG_c/dR_cj, the centre c of each pair
(index among that frame's atoms of the element) and the atom indices of c and j
in the frame (periodic images folded onto j), and the pair vector
R_cj = r_j - r_c (image included, float32, angstrom) for the virial.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from biasserver.symmetry import SymmetryFunctions

#: layout of the cache files (2: pair vectors and stress added); part of the file name
CACHE_VERSION = 2


class DataError(ValueError):
    """A training or test file cannot be used; the message names file and frame."""


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lookup(atoms: Atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


@dataclass
class Frames:
    """Structures and reference data of one file: energies (n,) eV, forces [(N_k, 3)] eV/A,
    stress (n, 3, 3) eV/A^3 (ASE's sign; zeros where ``has_stress`` (n,) is False)."""

    path: str
    atoms: list[Atoms]
    energies: np.ndarray
    forces: list[np.ndarray]
    stress: np.ndarray | None = None
    has_stress: np.ndarray | None = None

    def __post_init__(self):
        if self.stress is None:
            self.stress = np.zeros((len(self.atoms), 3, 3))
        if self.has_stress is None:
            self.has_stress = np.zeros(len(self.atoms), dtype=bool)


def _tensor(value, what: str, where: str) -> np.ndarray:
    """A (3, 3) symmetric tensor from Voigt (6,) in ASE's order, (9,) or (3, 3) values."""
    try:
        t = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {value!r} is not numeric") from None
    if t.size == 6:
        xx, yy, zz, yz, xz, xy = t.ravel()
        t = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif t.size == 9:
        t = t.reshape(3, 3)
    else:
        raise DataError(f"{where}: {what} has {t.size} components, expected 6 (Voigt), 9 or 3x3")
    if not np.all(np.isfinite(t)):
        raise DataError(f"{where}: {what} is not finite")
    return 0.5 * (t + t.T)


def frame_stress(atoms: Atoms, where: str, stress_key: str | None = None,
                 virial_key: str | None = None) -> np.ndarray | None:
    """The reference stress (3, 3) in eV/A^3 (ASE's sign) of one frame, or None.

    None for a cell not periodic in three directions, or when the frame has no
    stress and neither key was named (see module doc); a named key missing from
    a 3D-periodic frame raises DataError naming ``where`` (file and frame).
    """
    if not np.all(atoms.pbc):
        return None
    if virial_key is not None:
        value = _lookup(atoms, virial_key)
        if value is None:
            raise DataError(f"{where}: no virial under the key {virial_key!r} (virial_key is set, so every "
                            "frame with a 3D-periodic cell needs one; unset it to train without)")
        volume = abs(atoms.get_volume())
        return -_tensor(value, f"virial {virial_key!r}", where) / volume
    value = _lookup(atoms, stress_key or "stress")
    if value is None:
        if stress_key is not None:
            raise DataError(f"{where}: no stress under the key {stress_key!r} (stress_key is set, so every "
                            "frame with a 3D-periodic cell needs one; unset it to use stress where present)")
        return None
    return _tensor(value, f"stress {stress_key or 'stress'!r}", where)


def read_frames(path: str | os.PathLike, energy_key: str = "energy", forces_key: str = "forces",
                stress_key: str | None = None, virial_key: str | None = None) -> Frames:
    """Read every frame of an extxyz file with its energy, forces and (where present or
    required) stress (see module doc)."""
    from ase.io import read

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: the file is empty (no frames)")
    try:
        atoms_list = read(path, ":", format="extxyz")
    except Exception as err:  # ase raises many types for malformed files
        raise DataError(f"{path}: not a readable extxyz file ({type(err).__name__}: {err})") from None
    if not atoms_list:
        raise DataError(f"{path}: no frames in the file")
    energies, forces, stress, has_stress = [], [], [], []
    for k, atoms in enumerate(atoms_list):
        energy = _lookup(atoms, energy_key)
        if energy is None:
            raise DataError(f"{path}, frame {k}: no energy under the key {energy_key!r} "
                            "(set energy_key for files that name it differently)")
        f = _lookup(atoms, forces_key)
        if f is None:
            raise DataError(f"{path}, frame {k}: no forces under the key {forces_key!r} "
                            "(training needs forces; set forces_key for files that name them differently)")
        f = np.asarray(f, dtype=np.float64)
        if f.shape != (len(atoms), 3):
            raise DataError(f"{path}, frame {k}: forces have shape {f.shape}, expected ({len(atoms)}, 3)")
        try:
            energy = float(np.asarray(energy).item())
        except (TypeError, ValueError):
            raise DataError(f"{path}, frame {k}: energy {energy!r} is not a number") from None
        if not np.isfinite(energy) or not np.all(np.isfinite(f)):
            raise DataError(f"{path}, frame {k}: energy or forces are not finite")
        energies.append(energy)
        forces.append(f)
        sigma = frame_stress(atoms, f"{path}, frame {k}", stress_key, virial_key)
        has_stress.append(sigma is not None)
        stress.append(np.zeros((3, 3)) if sigma is None else sigma)
    return Frames(path, atoms_list, np.array(energies), forces, np.array(stress).reshape(-1, 3, 3),
                  np.array(has_stress, dtype=bool))


@dataclass
class FrameDescriptors:
    """Descriptors and reference data of a set of frames, concatenated over frames.

    n_atoms (n,), energies (n,) eV, forces (sum N, 3) eV/A, species (sum N,)
    element indices, stress (n, 3, 3) eV/A^3 (ASE's sign) where has_stress (n,),
    volume (n,) A^3 (0 for cells not periodic in 3D); per element e:
    ``counts[e]`` (n,) centres per frame, ``values[e]`` (sum n_e, F_e) float64,
    ``pairs[e]`` (n,) pairs per frame, ``deriv[e]`` (sum P_e, F_e, 3) float32 in
    1/A, ``centre[e]`` (sum P_e,) the pair's centre among the frame's atoms of e,
    ``first[e]``/``second[e]`` (sum P_e,) atom indices of centre and neighbour
    in the frame, ``vectors[e]`` (sum P_e, 3) float32 pair vectors in A.
    """

    elements: tuple[str, ...]
    n_atoms: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    species: np.ndarray
    stress: np.ndarray
    has_stress: np.ndarray
    volume: np.ndarray
    counts: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]
    deriv: dict[str, np.ndarray]
    centre: dict[str, np.ndarray]
    first: dict[str, np.ndarray]
    second: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]

    @property
    def n_frames(self) -> int:
        return len(self.n_atoms)

    def composition(self) -> np.ndarray:
        """(n, n_elements) number of atoms of each element per frame."""
        return np.stack([self.counts[e] for e in self.elements], axis=1)

    _PER_FRAME = ("n_atoms", "energies", "forces", "species", "stress", "has_stress", "volume")
    _PER_ELEMENT = ("counts", "values", "pairs", "deriv", "centre", "first", "second", "vectors")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self._PER_FRAME}
        for name in self._PER_ELEMENT:
            for e in self.elements:
                out[f"{name}/{e}"] = getattr(self, name)[e]
        return out

    @classmethod
    def from_arrays(cls, elements: tuple[str, ...], data) -> "FrameDescriptors":
        per = {name: {e: data[f"{name}/{e}"] for e in elements} for name in cls._PER_ELEMENT}
        return cls(elements, **{name: data[name] for name in cls._PER_FRAME}, **per)

    @classmethod
    def concatenate(cls, parts: list["FrameDescriptors"]) -> "FrameDescriptors":
        elements = parts[0].elements
        frame = {name: np.concatenate([getattr(p, name) for p in parts]) for name in cls._PER_FRAME}
        per = {name: {e: np.concatenate([getattr(p, name)[e] for p in parts]) for e in elements}
               for name in cls._PER_ELEMENT}
        return cls(elements, **frame, **per)


def compute_descriptors(frames: Frames, symmetry: SymmetryFunctions) -> FrameDescriptors:
    """Symmetry functions and derivatives of every frame (an unknown element names file and frame)."""
    elements = symmetry.elements
    counts = {e: [] for e in elements}
    values = {e: [] for e in elements}
    pairs = {e: [] for e in elements}
    deriv = {e: [] for e in elements}
    centre = {e: [] for e in elements}
    first = {e: [] for e in elements}
    second = {e: [] for e in elements}
    vectors = {e: [] for e in elements}
    species = []
    for k, atoms in enumerate(frames.atoms):
        try:
            desc = symmetry.compute(atoms)
        except ValueError as err:
            raise DataError(f"{frames.path}, frame {k}: {err}") from None
        species.append(desc.species)
        for e in elements:
            p = desc.pair_index[e]
            counts[e].append(len(desc.indices[e]))
            values[e].append(desc.values[e])
            pairs[e].append(len(p))
            deriv[e].append(desc.derivatives[e].astype(np.float32))
            centre[e].append(desc.pair_centre[e].astype(np.int32))
            first[e].append(desc.neighbours.first[p].astype(np.int32))
            second[e].append(desc.neighbours.second[p].astype(np.int32))
            vectors[e].append(desc.neighbours.vectors[p].astype(np.float32))
    cat = lambda d, dtype: {e: np.asarray(np.concatenate(d[e]), dtype=dtype) for e in elements}
    volume = np.array([abs(a.get_volume()) if np.all(a.pbc) else 0.0 for a in frames.atoms])
    return FrameDescriptors(
        elements, np.array([len(a) for a in frames.atoms], dtype=np.int64), frames.energies.copy(),
        np.concatenate(frames.forces), np.concatenate(species).astype(np.int32),
        np.asarray(frames.stress, dtype=np.float64).reshape(-1, 3, 3), np.asarray(frames.has_stress, dtype=bool),
        volume,
        {e: np.array(counts[e], dtype=np.int64) for e in elements},
        {e: np.concatenate(values[e]).reshape(-1, symmetry.size(e)) for e in elements},
        {e: np.array(pairs[e], dtype=np.int64) for e in elements},
        {e: np.concatenate(deriv[e]).reshape(-1, symmetry.size(e), 3) for e in elements},
        cat(centre, np.int32), cat(first, np.int32), cat(second, np.int32),
        {e: np.concatenate(vectors[e]).reshape(-1, 3).astype(np.float32) for e in elements})


def cache_path(cache_dir: str, path: str, digest: str, symmetry: SymmetryFunctions,
               energy_key: str, forces_key: str, stress_key: str | None = None,
               virial_key: str | None = None) -> str:
    """The cache file of one data file (content hash + symmetry fingerprint + keys and
    cache version)."""
    keys = hashlib.sha1(f"v{CACHE_VERSION}\0{energy_key}\0{forces_key}\0{stress_key}\0{virial_key}"
                        .encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir, f"{stem}-{digest[:16]}-{symmetry.fingerprint()}-{keys}.npz")


def _cache_meta(digest: str, symmetry: SymmetryFunctions, energy_key: str, forces_key: str,
                stress_key: str | None, virial_key: str | None) -> dict:
    return {"version": CACHE_VERSION, "file_sha256": digest, "symmetry_fingerprint": symmetry.fingerprint(),
            "elements": list(symmetry.elements), "energy_key": energy_key, "forces_key": forces_key,
            "stress_key": stress_key, "virial_key": virial_key}


def load_cache(cache: str, expected: dict) -> FrameDescriptors:
    """Read a cache file, refusing one whose record disagrees with ``expected``."""
    try:
        with np.load(cache, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            for key, want in expected.items():
                if meta.get(key) != want:
                    raise DataError(f"{cache}: descriptor cache made with {key} = {meta.get(key)!r}, "
                                    f"but {want!r} is needed (delete the file to rebuild it)")
            return FrameDescriptors.from_arrays(tuple(meta["elements"]), {k: data[k] for k in data.files})
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{cache}: unreadable descriptor cache ({err}); delete it to rebuild") from None


def frame_descriptors(path: str | os.PathLike, symmetry: SymmetryFunctions, cache_dir: str | None,
                      energy_key: str = "energy", forces_key: str = "forces", stress_key: str | None = None,
                      virial_key: str | None = None) -> tuple[FrameDescriptors, str]:
    """Descriptors of every frame of ``path`` (from the cache when present) and the file's SHA-256."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    digest = file_hash(path)
    meta = _cache_meta(digest, symmetry, energy_key, forces_key, stress_key, virial_key)
    cache = cache_path(cache_dir, path, digest, symmetry, energy_key, forces_key, stress_key,
                       virial_key) if cache_dir else None
    if cache and os.path.exists(cache):
        return load_cache(cache, meta), digest
    data = compute_descriptors(read_frames(path, energy_key, forces_key, stress_key, virial_key), symmetry)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cache}.tmp{os.getpid()}.npz"
        np.savez(tmp, meta=np.array(json.dumps(meta)), **data.arrays())
        os.replace(tmp, cache)
    return data, digest


def data_elements(paths: list[str], energy_key: str = "energy", forces_key: str = "forces",
                  stress_key: str | None = None, virial_key: str | None = None) -> list[str]:
    """Sorted element symbols found in the files (for the default symmetry functions)."""
    found: set[str] = set()
    for path in paths:
        for atoms in read_frames(path, energy_key, forces_key, stress_key, virial_key).atoms:
            found.update(atoms.get_chemical_symbols())
    return sorted(found)
