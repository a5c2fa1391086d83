"""Analysis of the GeTe runs (the paper's Fig. 3): energy, order, coverage, snapshots.

Every function takes run folders (``<run>/output/gmetad/`` of
:func:`studies.pipeline.sample`) or frames, so the study pipeline can call them on
its cached stages:

- :func:`energy_series`: the reference (CHGNet) potential energy per atom relative
  to relaxed rock salt, and the bias energy per atom, against simulated time.
- :func:`rock_salt_like`: per atom, whether its first shell is still a rock-salt
  octahedron (see the criterion there); :func:`non_rock_salt_fraction` per element.
- :func:`coverage_series`: the coverage measure of :mod:`biasserver.coverage` per
  element against time, standardised by a reference set (the plain MD).
- :func:`analyse`: all of it for a set of runs, written as ``gete.json``,
  ``gete.png`` (energy, order, coverage, with a snapshot strip below) and
  ``gete-snapshots.png`` (every run at the same times).

Units: angstrom, eV (energies per atom), ps.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.io import read

from .gete import E_ROCK_SALT, MIN_DISTANCE, SYMMETRY, TEMPERATURE, TIMESTEP

#: the sixth-nearest neighbour must lie within this distance (A): above rock salt's
#: Ge-Te distance a/2 = 3.01 A (3.19 A for the long bonds of rhombohedral GeTe) by
#: thermal stretching, below the like-element shell at a/sqrt(2) = 4.25 A
FIRST_SHELL = 3.8
#: an octahedron's opposite bonds: angle above this (degrees); its other angles are 90
LINEAR_ANGLE = 150.0
#: fractions of the run length at which snapshots are drawn
SNAPSHOT_FRACTIONS = (0.0, 1 / 3, 2 / 3, 1.0)


# ------------------------------------------------------------------ reading runs


def run_files(folder: str) -> dict[str, str]:
    """The files of a run folder written by :func:`studies.pipeline.sample`:
    frames (extxyz), i-PI's md.out, HILLS."""
    variant = os.path.join(folder, "output", "gmetad")
    files = {"frames": os.path.join(variant, "frames.extxyz"), "md_out": os.path.join(variant, "md.out"),
             "hills": os.path.join(variant, "HILLS")}
    if not os.path.exists(files["frames"]):
        raise FileNotFoundError(f"{folder}: no frames file {files['frames']} (has the run been made?)")
    return files


def read_run(frames_path: str) -> list[Atoms]:
    """The reference frames of a run in order of MD step, one per step (a step
    recorded twice, as after a restart, keeps its last record)."""
    by_step: dict[int, Atoms] = {}
    for k, atoms in enumerate(read(frames_path, ":", format="extxyz")):
        by_step[int(atoms.info.get("step", k))] = atoms
    return [by_step[s] for s in sorted(by_step)]


# ------------------------------------------------------------------ energy


def energy_series(frames: Sequence[Atoms], timestep: float = TIMESTEP,
                  reference: float = E_ROCK_SALT) -> dict[str, list]:
    """Simulated time (ps), reference potential energy per atom minus ``reference``
    (eV/atom) and the bias energy per atom (eV/atom) of each frame."""
    time_ps, energy, bias = [], [], []
    for k, atoms in enumerate(frames):
        n = len(atoms)
        time_ps.append(int(atoms.info.get("step", k)) * timestep / 1000.0)
        energy.append(float(atoms.get_potential_energy()) / n - reference)
        bias.append(float(atoms.info.get("bias_energy", 0.0)) / n)
    return {"time_ps": time_ps, "energy_rel": energy, "bias": bias}


def min_distance(atoms: Atoms, search: float = 3.5) -> float:
    """The shortest interatomic distance (A), periodic images included; ``search``
    when no two atoms are closer than that (a bound, enough for the stability check)."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, search)
    return float(d.min()) if len(d) else float(search)


def msd_series(frames: Sequence[Atoms]) -> dict[str, list]:
    """Per element, the mean squared displacement (A^2) of each frame from the
    first, with the centre-of-mass drift removed; positions are unwrapped by the
    minimum image between consecutive frames. In a crystal it levels off at
    twice the thermal mean square amplitude (about 0.1-0.2 A^2 at 600 K); atoms
    leaving their sites make it grow."""
    if not frames:
        return {}
    symbols = np.array(frames[0].get_chemical_symbols())
    masses = frames[0].get_masses()
    position = frames[0].positions.copy()
    previous = position.copy()
    out: dict[str, list] = {e: [] for e in sorted(set(symbols))}
    for atoms in frames:
        step = atoms.positions - previous
        fractional = step @ np.linalg.inv(atoms.cell.array)
        step = (fractional - np.round(fractional)) @ atoms.cell.array
        position = position + step
        previous = atoms.positions
        shift = position - frames[0].positions
        shift -= (masses[:, None] * shift).sum(axis=0) / masses.sum()
        squared = (shift**2).sum(axis=1)
        for e in out:
            out[e].append(float(squared[symbols == e].mean()))
    return out


# ------------------------------------------------------------------ local order


def rock_salt_like(atoms: Atoms, first_shell: float = FIRST_SHELL, linear_angle: float = LINEAR_ANGLE) -> np.ndarray:
    """Per atom, whether its environment is still rock-salt-like: its six nearest
    neighbours lie within ``first_shell`` (A), are all of another element, and form
    an octahedron, i.e. they split into three pairs of opposite bonds (bond angle
    above ``linear_angle`` degrees), each neighbour in exactly one pair.

    Taking the six nearest rather than all within a fixed radius keeps thermal
    stretching of a bond from counting as a broken octahedron. Random
    displacements of 0.15 A rms per direction and the rhombohedral (3 short + 3
    long bonds) Peierls distortion keep the octahedron; a wrong bond (antisite), a missing neighbour or a tetrahedral
    or otherwise non-octahedral environment does not."""
    from ase.neighborlist import neighbor_list

    i, j, vectors = neighbor_list("ijD", atoms, first_shell)
    numbers = atoms.numbers
    cos_linear = np.cos(np.radians(linear_angle))
    result = np.zeros(len(atoms), dtype=bool)
    for atom in range(len(atoms)):
        mine = np.flatnonzero(i == atom)
        if len(mine) < 6:
            continue
        nearest = mine[np.argsort(np.linalg.norm(vectors[mine], axis=1), kind="stable")[:6]]
        if np.any(numbers[j[nearest]] == numbers[atom]):
            continue
        unit = vectors[nearest] / np.linalg.norm(vectors[nearest], axis=1)[:, None]
        opposite = (unit @ unit.T) < cos_linear          # the diagonal is +1, never opposite
        result[atom] = bool(np.all(opposite.sum(axis=1) == 1))
    return result


def non_rock_salt_fraction(atoms: Atoms, **kwargs: Any) -> dict[str, float]:
    """Per element, the fraction of atoms that are not rock-salt-like (:func:`rock_salt_like`)."""
    like = rock_salt_like(atoms, **kwargs)
    symbols = np.array(atoms.get_chemical_symbols())
    return {e: float(1.0 - like[symbols == e].mean()) for e in sorted(set(symbols))}


# ------------------------------------------------------------------ coverage


def coverage_series(frames: Sequence[Atoms], reference_frames: Sequence[Atoms], radius: float = 1.0,
                    symmetry_functions=None) -> dict[str, list]:
    """Per element, the number of covering centres after each frame (greedy
    covering at ``radius`` in G standardised by ``reference_frames``; see
    :mod:`biasserver.coverage`), covering ``frames`` in order."""
    from biasserver.coverage import Coverage, environments

    sf = symmetry_functions or _symmetry_functions()
    reference = Coverage.from_reference(environments(reference_frames, sf), radius)
    covering = Coverage(reference.mean, reference.scale, reference.radius)
    counts: dict[str, list] = {e: [] for e in sf.elements}
    for atoms in frames:
        covering.add(sf.values(atoms))
        for e in sf.elements:
            counts[e].append(covering.count(e))
    return counts


def thermal_radius(reference_frames: Sequence[Atoms], symmetry_functions=None) -> float:
    """The covering radius at the scale of thermal motion: the median, over the
    reference environments of both elements, of their standardised distance to
    their element's mean. In D standardised dimensions this is about sqrt(D)
    (8.4 for 70 functions), so one centre covers a typical thermal cloud, while at
    radius 1 nearly every environment of any run is a centre of its own."""
    from biasserver.coverage import environments

    sf = symmetry_functions or _symmetry_functions()
    distances = []
    for e, g in environments(reference_frames, sf).items():
        if len(g):
            std = g.std(axis=0)
            std[~(std > 0)] = 1.0
            distances.append(np.linalg.norm((g - g.mean(axis=0)) / std, axis=1))
    return float(np.median(np.concatenate(distances)))


def _symmetry_functions():
    from biasserver.symmetry import SymmetryFunctions

    spec = SYMMETRY["default"]
    return SymmetryFunctions.default(spec["elements"], cutoff=spec["cutoff"])


# ------------------------------------------------------------------ the whole analysis


def analyse_run(frames: Sequence[Atoms], reference_frames: Sequence[Atoms], radius: float, stride: int = 10,
                timestep: float = TIMESTEP, md_out: str | None = None) -> dict[str, Any]:
    """Everything Fig. 3 shows for one run: the energy series (every frame); the
    non-rock-salt fractions, the mean squared displacements and the coverage (at
    ``radius`` and at the shared radius 1) every ``stride`` frames; the shortest distance; and with ``md_out``
    the thermostat check of :func:`studies.pipeline.stability`."""
    series = energy_series(frames, timestep)
    picked = list(frames[::stride])
    fractions = [non_rock_salt_fraction(a) for a in picked]
    elements = sorted(fractions[0]) if fractions else []
    distances = [min_distance(a) for a in frames]
    out = {
        **series,
        "sampled_time_ps": [series["time_ps"][k] for k in range(0, len(frames), stride)],
        "non_rock_salt": {e: [f[e] for f in fractions] for e in elements},
        "msd": {e: v[::stride] for e, v in msd_series(frames).items()},
        "coverage": coverage_series(picked, reference_frames, radius),
        "coverage_radius_1": coverage_series(picked, reference_frames, 1.0),
        "min_distance": float(min(distances)) if distances else float("nan"),
        "min_distance_ok": bool(distances and min(distances) >= MIN_DISTANCE),
    }
    if md_out is not None:
        from .pipeline import md_log, stability

        out["stability"] = stability(md_log(md_out), TEMPERATURE)
    return out


def snapshot_indices(n_frames: int, fractions: Sequence[float] = SNAPSHOT_FRACTIONS) -> list[int]:
    """Frame indices at the given fractions of a run of ``n_frames`` frames."""
    return sorted({int(round(f * (n_frames - 1))) for f in fractions})


def analyse(runs: Mapping[str, str], output: str, reference: str = "plain", stride: int = 10,
            timestep: float = TIMESTEP, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Analyse run folders {name: folder}; ``reference`` names the run whose frames
    standardise the coverage (the plain MD). Writes ``output/gete.json``,
    ``gete.png`` and ``gete-snapshots.png``; returns the JSON data."""
    os.makedirs(output, exist_ok=True)
    frames = {name: read_run(run_files(folder)["frames"]) for name, folder in runs.items()}
    if reference not in frames:
        raise ValueError(f"the coverage reference run {reference!r} is not among the runs ({', '.join(frames)})")
    reference_frames = frames[reference][::stride]
    radius = thermal_radius(reference_frames)
    data: dict[str, Any] = {
        "settings": dict(settings or {}),
        "criteria": {"first_shell_A": FIRST_SHELL, "linear_angle_deg": LINEAR_ANGLE,
                     "min_distance_A": MIN_DISTANCE, "coverage_reference": reference,
                     "coverage_radius": radius, "coverage_radius_rule": "thermal_radius (median "
                     "standardised distance of the reference environments to their mean); "
                     "coverage_radius_1: the shared radius 1", "stride": stride},
        "rock_salt_energy_eV_per_atom": E_ROCK_SALT,
        "runs": {},
    }
    snapshots = {}
    for name, folder in runs.items():
        md_out = run_files(folder)["md_out"]
        result = analyse_run(frames[name], reference_frames, radius, stride, timestep,
                             md_out if os.path.exists(md_out) else None)
        picks = snapshot_indices(len(frames[name]))
        result["snapshots"] = [{"frame": k, "time_ps": result["time_ps"][k]} for k in picks]
        snapshots[name] = [frames[name][k] for k in picks]
        data["runs"][name] = result
    with open(os.path.join(output, "gete.json"), "w") as handle:
        json.dump(data, handle, indent=1)
    plot(data, snapshots, os.path.join(output, "gete.png"), os.path.join(output, "gete-snapshots.png"))
    return data


# ------------------------------------------------------------------ figures


def _draw_atoms(ax, atoms: Atoms, title: str) -> None:
    from ase.visualize.plot import plot_atoms

    shown = atoms.copy()
    shown.wrap()              # i-PI's positions are not wrapped into the cell
    plot_atoms(shown, ax, rotation="15x,-20y,0z", radii=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def plot(data: Mapping[str, Any], snapshots: Mapping[str, Sequence[Atoms]], path: str,
         snapshots_path: str | None = None) -> None:
    """Fig. 3: energy per atom relative to rock salt, non-rock-salt fraction and
    coverage against time for every run, and a snapshot strip of the first
    G-metaD run; with ``snapshots_path`` also every run's snapshots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    names = list(runs)
    colours = {name: ("0.35" if name == data["criteria"]["coverage_reference"] else f"C{k}")
               for k, name in enumerate(names)}
    featured = next((n for n in names if n != data["criteria"]["coverage_reference"]), names[0])
    strip = snapshots.get(featured, [])
    fig = plt.figure(figsize=(11, 9.5))
    grid = fig.add_gridspec(3, max(len(strip), 1), height_ratios=[1.2, 1.0, 0.8], hspace=0.45)
    top = grid[0, :].subgridspec(1, 2, wspace=0.25)
    ax_e = fig.add_subplot(top[0])
    ax_b = fig.add_subplot(top[1])
    middle = grid[1, :].subgridspec(1, 2, wspace=0.25)
    ax_o = fig.add_subplot(middle[0])
    ax_c = fig.add_subplot(middle[1])
    for name in names:
        r = runs[name]
        style = "--" if colours[name] == "0.35" else "-"
        ax_e.plot(r["time_ps"], 1000 * np.asarray(r["energy_rel"]), style, color=colours[name], lw=1, label=name)
        ax_b.plot(r["time_ps"], 1000 * np.asarray(r["bias"]), style, color=colours[name], lw=1, label=name)
        for e, marker in zip(sorted(r["non_rock_salt"]), ("-", ":")):
            ax_o.plot(r["sampled_time_ps"], r["non_rock_salt"][e], marker, color=colours[name], lw=1,
                      label=f"{name} {e}")
        total = np.sum([r["coverage"][e] for e in r["coverage"]], axis=0)
        ax_c.plot(r["sampled_time_ps"], total, style, color=colours[name], lw=1, label=name)
    for shot in runs[featured]["snapshots"]:
        k = shot["frame"]
        ax_e.plot(shot["time_ps"], 1000 * runs[featured]["energy_rel"][k], "o", color=colours[featured], ms=5)
    ax_e.set(xlabel="time (ps)", ylabel="E - E(rock salt) (meV/atom)", title="CHGNet potential energy")
    ax_b.set(xlabel="time (ps)", ylabel="bias energy (meV/atom)", title="G-metaD bias")
    ax_o.set(xlabel="time (ps)", ylabel="fraction not rock-salt-like", ylim=(-0.02, 1.02),
             title="local order (solid Ge, dotted Te)")
    ax_c.set(xlabel="time (ps)", ylabel="covering centres (Ge + Te)",
             title=f"coverage (radius {data['criteria']['coverage_radius']:.1f}, "
                   f"standardised by {data['criteria']['coverage_reference']})")
    ax_e.legend(fontsize=7)
    for k, atoms in enumerate(strip):
        ax = fig.add_subplot(grid[2, k])
        shot = runs[featured]["snapshots"][k]
        _draw_atoms(ax, atoms, f"{featured}, {shot['time_ps']:.2f} ps")
    n_atoms = len(strip[0]) if strip else 0
    fig.suptitle(f"{n_atoms}-atom GeTe from rock salt, NVT {TEMPERATURE:g} K, CHGNet reference "
                 "(snapshots: Ge grey, Te orange)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if snapshots_path is None:
        return
    rows = [n for n in names if snapshots.get(n)]
    cols = max(len(snapshots[n]) for n in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.4 * cols, 2.4 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            if c < len(snapshots[name]):
                shot = runs[name]["snapshots"][c]
                _draw_atoms(ax, snapshots[name][c],
                            f"{name} {shot['time_ps']:.2f} ps, {1000 * runs[name]['energy_rel'][shot['frame']] + 0:+.0f} meV/atom")
            else:
                ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(snapshots_path, dpi=100)
    plt.close(fig)
