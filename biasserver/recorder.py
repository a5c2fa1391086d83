"""The training-set recorder: every reference evaluation becomes an extxyz frame.

Frames hold the unbiased reference energy, forces and (when the force client sent
a virial for a periodic cell) stress, as an ASE single-point calculator would, so
``ase.io.read(path, ":")`` gives atoms whose ``get_potential_energy()``,
``get_forces()`` and ``get_stress()`` are the reference values. ``info`` also
carries ``bias_energy`` (eV), ``step`` (i-PI's MD step), ``walker`` (the walker's
index in a walkers job, 0 alone), ``bead`` (the path-integral bead, 0 without
beads) and ``n_hills``.

Appends are crash-safe: each frame is written with one ``write`` call on an
``O_APPEND`` descriptor and flushed (and fsync'ed unless disabled); on opening,
an interrupted last frame left by a crash is cut off, so the file always holds
whole frames only. A restart that redoes steps moves their frames to a side file
(:func:`set_aside`) and appends after the frames kept.
"""
from __future__ import annotations

import io
import os
import re

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from . import setaside


def _complete_length(path: str) -> tuple[int, int]:
    """Byte length and number of the leading complete extxyz frames in ``path``."""
    with open(path, "rb") as handle:
        ends = _frame_ends(handle.read())
    return (ends[-1] if ends else 0), len(ends)


def _frame_ends(data: bytes) -> list[int]:
    """Byte offsets just past each leading complete extxyz frame of ``data``."""
    ends = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break
        try:
            natoms = int(data[pos:end])
        except ValueError:
            break
        cursor = end + 1
        for _ in range(natoms + 1):       # comment line + one line per atom
            nxt = data.find(b"\n", cursor)
            if nxt < 0:
                return ends
            cursor = nxt + 1
        pos = cursor
        ends.append(cursor)
    return ends


_STEP = re.compile(rb"(?:^|\s)step=(-?\d+)(?:\s|$)")


def set_aside(path: str | os.PathLike, step: int) -> str | None:
    """Move the frames of MD steps >= ``step`` of the frames file ``path`` into a
    side file (``frames.after-<step>.extxyz``), rewriting ``path`` crash-safely
    with the earlier frames, byte for byte (see :mod:`biasserver.setaside`). An
    interrupted last frame is cut off, as when a recorder opens the file. Returns
    the side file's name, or None when no frame was set aside."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        data = handle.read()
    ends = _frame_ends(data)
    complete = ends[-1] if ends else 0
    start, cut = 0, complete
    for end in ends:
        comment = data[data.find(b"\n", start) + 1:end].split(b"\n", 1)[0]
        found = _STEP.search(comment)
        if found is None:
            raise ValueError(f"{path}: frame at byte {start} has no step= in its comment line")
        if int(found.group(1)) >= step:
            cut = start
            break
        start = end
    if cut == complete:
        if complete < len(data):
            setaside.write_atomic(path, data[:complete])
        return None
    return setaside.split(path, step, data[:cut], data[cut:complete])


class FrameRecorder:
    """Appends reference frames to an extxyz file (see module docstring).

    symbols: chemical symbols of the atoms, in i-PI's order; pbc: periodicity.
    """

    def __init__(self, path: str | os.PathLike, symbols, pbc=(True, True, True), fsync: bool = True):
        self.path = os.fspath(path)
        self.symbols = list(symbols)
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), 3).copy()
        self.fsync = fsync
        self.n_frames = 0
        #: frames the file held when it was opened (a restarted run appends to them)
        self.n_frames_on_disk = 0
        if os.path.exists(self.path):
            keep, self.n_frames_on_disk = _complete_length(self.path)
            if keep != os.path.getsize(self.path):
                with open(self.path, "rb+") as handle:
                    handle.truncate(keep)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def frame(self, positions: np.ndarray, cell: np.ndarray, energy: float, forces: np.ndarray,
              virial: np.ndarray | None = None, **info) -> Atoms:
        """The Atoms of one frame: positions (N, 3) and cell (3, 3, rows) in angstrom,
        reference energy (eV), forces (N, 3) eV/A, virial (3, 3) eV or None."""
        atoms = Atoms(self.symbols, positions=positions, cell=cell, pbc=self.pbc)
        results = {"energy": float(energy), "free_energy": float(energy), "forces": np.asarray(forces)}
        if virial is not None and self.pbc.all():
            stress = -np.asarray(virial) / atoms.get_volume()
            results["stress"] = 0.5 * (stress + stress.T)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(info)
        return atoms

    def record(self, positions: np.ndarray, cell: np.ndarray, energy: float, forces: np.ndarray,
               virial: np.ndarray | None = None, **info) -> None:
        """Append one frame (arguments as :meth:`frame`; ``info`` goes to the comment line)."""
        buffer = io.StringIO()
        write(buffer, self.frame(positions, cell, energy, forces, virial, **info), format="extxyz")
        data = buffer.getvalue().encode()
        written = os.write(self._fd, data)
        if written != len(data):   # a short write: finish it, the file must hold whole frames
            os.write(self._fd, data[written:])
        if self.fsync:
            os.fsync(self._fd)
        self.n_frames += 1

    def set_aside(self, step: int) -> str | None:
        """Set aside the frames of steps >= ``step`` (module function :func:`set_aside`)
        and append after the frames kept; returns the side file's name or None."""
        self.close()
        side = set_aside(self.path, step)
        _, self.n_frames_on_disk = _complete_length(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return side

    def last_frame(self) -> Atoms:
        """The last complete frame on disk."""
        return read(self.path, index=-1, format="extxyz")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FrameRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
