"""GeTe: does G-metaD data make a better potential? (issue 11, item 4)

Test frames neither training set saw, made with the reference (CHGNet) by ASE
molecular dynamics, and the pieces that compare NNPs trained on G-metaD frames
(NNP-G) and on plain MD frames (NNP-MD) against the reference on them:

- :func:`melt_quench`: amorphous GeTe. 32 Ge + 32 Te at random positions (no two
  closer than ``closest``) in rock salt's cubic cell expanded to the amorphous
  density, a liquid at ``melt_temperature`` (the random start has no memory of
  the crystal), quenched linearly to ``final_temperature`` and annealed there;
  the test frames come from the anneal.
- :func:`rhombohedral` and :func:`rhombohedral_md`: alpha-GeTe-like frames. Rock
  salt stretched along [111] with Ge shifted along [111] (3 short + 3 long Ge-Te
  bonds, the Peierls distortion); CHGNet relaxes this back to rock salt, so the
  frames come from a short NVT run started there, and :func:`ge_shift` follows
  what the distortion does during it.
- :func:`order_statistics`: coordination and bond-angle statistics that tell an
  amorphous structure from rock salt.
- :func:`error_table`: each committee's energy and force errors on each frame set,
  for the committee mean and for every member (mean and spread over members),
  with the committee's own spread (std over members of its predictions).
- :func:`compare`: which committee is lower on each set, only when the gap is
  larger than the noise (rule fixed in advance: the difference of the members'
  mean RMSEs exceeds the sum of the two member spreads).

Units: angstrom, eV, eV/A, K, fs (MD steps of ``timestep`` fs).
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.io import write

#: [111] unit vector of the cubic rock-salt cell
N111 = np.ones(3) / np.sqrt(3.0)
#: Ge-Te first-shell bond cutoff (A) of the order statistics: rock salt's 3.006 A
#: bonds and amorphous GeTe's 2.6-3.0 A bonds inside, rock salt's second shell (4.25 A) out
BOND_CUTOFF = 3.2
#: an angle counts as octahedral within this many degrees of 90 or 180
OCTAHEDRAL_TOLERANCE = 15.0


# ------------------------------------------------------------------ structures


def rhombohedral(repeat: int = 2, a: float | None = None, u: float = 0.3, strain: float = 0.02) -> Atoms:
    """alpha-GeTe-like cell: rock salt (``repeat``^3 cubic cells, lattice constant
    ``a``, default CHGNet's) stretched by ``strain`` along [111], Ge shifted by
    ``u`` (A) along [111]: 3 short (2.9 A) and 3 long (3.2 A) Ge-Te bonds
    (alpha-GeTe: 2.84 and 3.16 A)."""
    from .gete import A_ROCK_SALT, rock_salt

    atoms = rock_salt(repeat, A_ROCK_SALT if a is None else a)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain * np.outer(N111, N111)), scale_atoms=True)
    ge = np.array(atoms.get_chemical_symbols()) == "Ge"
    atoms.positions[ge] += u * N111
    return atoms


def random_start(repeat: int = 2, density_factor: float = 1.0, closest: float = 2.4, seed: int = 7) -> Atoms:
    """Rock salt's atoms (``repeat``^3 cubic cells) at random positions in its cell
    scaled to ``density_factor`` times the crystal's density (< 1: expanded), no two
    atoms closer than ``closest`` A (minimum image); seeded."""
    from ase.geometry import get_distances

    from .gete import rock_salt

    atoms = rock_salt(repeat)
    atoms.set_cell(atoms.cell.array * density_factor ** (-1.0 / 3.0), scale_atoms=True)
    rng = np.random.default_rng(seed)
    cell = atoms.cell.array
    placed: list[np.ndarray] = []
    for _ in range(200000):
        if len(placed) == len(atoms):
            break
        trial = rng.random(3) @ cell
        if placed:
            _, d = get_distances(trial[None, :], np.array(placed), cell=cell, pbc=True)
            if d.min() < closest:
                continue
        placed.append(trial)
    else:
        raise RuntimeError(f"cannot place {len(atoms)} atoms {closest} A apart in the cell")
    atoms.positions = np.array(placed)
    return atoms


# ------------------------------------------------------------------ MD with the reference


def _snapshot(atoms: Atoms, **info: Any) -> Atoms:
    """A copy of ``atoms`` holding the calculator's energy, forces and stress."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    try:
        results["stress"] = atoms.get_stress()
    except Exception:  # noqa: BLE001 - a calculator without stress: frames without it
        pass
    frame.calc = SinglePointCalculator(frame, **results)
    frame.info.update(info)
    return frame


def run_schedule(atoms: Atoms, calc, temperatures: Sequence[float], timestep: float, seed: int,
                 keep: Sequence[bool], tau: float = 100.0) -> tuple[list[Atoms], dict[str, list]]:
    """NVT Langevin MD (time constant ``tau`` fs) of ``atoms`` with ``calc``, one
    step per entry of ``temperatures`` (the thermostat's target at that step, K),
    velocities drawn at the first target. Returns the frames of the steps where
    ``keep`` is true (after the step; energy, forces and stress of ``calc``) and a
    log per step: target and kinetic temperature (K), potential energy (eV/atom)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    if len(keep) != len(temperatures):
        raise ValueError(f"keep has {len(keep)} entries for {len(temperatures)} steps")
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperatures[0], rng=rng)
    Stationary(atoms)
    md = Langevin(atoms, timestep * units.fs, temperature_K=temperatures[0], friction=1.0 / (tau * units.fs),
                  rng=rng)
    frames: list[Atoms] = []
    log: dict[str, list] = {"target": [], "temperature": [], "energy": []}
    for step, (target, wanted) in enumerate(zip(temperatures, keep), start=1):
        md.set_temperature(temperature_K=float(target))
        md.run(1)
        log["target"].append(float(target))
        log["temperature"].append(float(atoms.get_temperature()))
        log["energy"].append(float(atoms.get_potential_energy()) / len(atoms))
        if wanted:
            frames.append(_snapshot(atoms, step=step, target_temperature=float(target)))
    return frames, log


def melt_quench(calc, repeat: int = 2, density_factor: float = 0.92, melt_temperature: float = 2000.0,
                melt_steps: int = 250, quench_steps: int = 400, final_temperature: float = 300.0,
                anneal_steps: int = 250, every: int = 5, timestep: float = 2.0, seed: int = 7,
                closest: float = 2.4) -> tuple[list[Atoms], dict[str, Any]]:
    """Amorphous GeTe frames made with ``calc``: random start (:func:`random_start`,
    ``density_factor`` of the crystal's density), ``melt_steps`` at
    ``melt_temperature`` K, a linear quench to ``final_temperature`` over
    ``quench_steps``, ``anneal_steps`` at ``final_temperature``; every
    ``every``-th frame of the anneal is returned. Also returns the run's record:
    per-step log, the order statistics of the last liquid frame and of the last
    frame, and the seconds per step."""
    start = random_start(repeat, density_factor, closest, seed)
    temperatures = ([melt_temperature] * melt_steps
                    + list(np.linspace(melt_temperature, final_temperature, quench_steps + 1)[1:])
                    + [final_temperature] * anneal_steps)
    first_anneal = melt_steps + quench_steps
    keep = [k >= first_anneal and (k - first_anneal + 1) % every == 0 for k in range(len(temperatures))]
    keep[melt_steps - 1] = True                       # the last liquid frame, for the record
    t0 = time.monotonic()
    frames, log = run_schedule(start, calc, temperatures, timestep, seed, keep)
    seconds = time.monotonic() - t0
    liquid, frames = frames[0], frames[1:]
    record = {"steps": len(temperatures), "melt_steps": melt_steps, "quench_steps": quench_steps,
              "anneal_steps": anneal_steps, "every": every, "melt_temperature": melt_temperature,
              "final_temperature": final_temperature, "density_factor": density_factor,
              "cell_edge": float(start.cell[0, 0]), "timestep_fs": timestep, "seed": seed,
              "quench_rate_K_per_ps": (melt_temperature - final_temperature) / (quench_steps * timestep / 1000.0),
              "liquid": order_statistics(liquid), "final": order_statistics(frames[-1]),
              "anneal_temperature_mean": float(np.mean(log["temperature"][first_anneal:])),
              "seconds": seconds, "seconds_per_step": seconds / len(temperatures), "log": log}
    return frames, record


def ge_shift(frames: Sequence[Atoms], start: Atoms, u0: float) -> list[float]:
    """Per frame, the mean displacement (A) of Ge along [111] relative to Te's,
    added to the start's shift ``u0``: the rhombohedral distortion's order parameter
    (0 in rock salt on average; unwrapped from ``start``, no atom moving more than
    half a cell between them)."""
    ge = np.array(start.get_chemical_symbols()) == "Ge"
    out = []
    for atoms in frames:
        d = atoms.positions - start.positions
        fractional = d @ np.linalg.inv(atoms.cell.array)
        d = (fractional - np.round(fractional)) @ atoms.cell.array
        along = d @ N111
        out.append(float(u0 + along[ge].mean() - along[~ge].mean()))
    return out


def rhombohedral_md(calc, repeat: int = 2, u: float = 0.3, strain: float = 0.02, temperature: float = 300.0,
                    steps: int = 300, every: int = 5, timestep: float = 2.0, seed: int = 11) \
        -> tuple[list[Atoms], dict[str, Any]]:
    """Frames of a short NVT run of ``calc`` started at :func:`rhombohedral`
    (fixed strained cell): every ``every``-th of ``steps`` steps at ``temperature``
    K. Returns them and the record: the Ge shift along [111] (:func:`ge_shift`)
    and the order statistics of the start and of the last frame."""
    start = rhombohedral(repeat, u=u, strain=strain)
    keep = [(k + 1) % every == 0 for k in range(steps)]
    t0 = time.monotonic()
    frames, log = run_schedule(start, calc, [temperature] * steps, timestep, seed, keep)
    seconds = time.monotonic() - t0
    shift = ge_shift(frames, start, u)
    quarter = max(1, len(shift) // 4)
    record = {"steps": steps, "every": every, "temperature": temperature, "u": u, "strain": strain,
              "timestep_fs": timestep, "seed": seed, "ge_shift": shift,
              "ge_shift_first_quarter": float(np.mean(shift[:quarter])),
              "ge_shift_last_quarter": float(np.mean(shift[-quarter:])),
              "start": order_statistics(start), "final": order_statistics(frames[-1]),
              "temperature_mean": float(np.mean(log["temperature"][len(log["temperature"]) // 2:])),
              "seconds": seconds, "seconds_per_step": seconds / steps, "log": log}
    return frames, record


def write_frames(frames: Sequence[Atoms], path: str) -> str:
    write(path, list(frames), format="extxyz")
    return path


# ------------------------------------------------------------------ order statistics


def order_statistics(atoms: Atoms, cutoff: float = BOND_CUTOFF,
                     tolerance: float = OCTAHEDRAL_TOLERANCE) -> dict[str, Any]:
    """Coordination and bond angles of ``atoms`` within ``cutoff`` A: mean
    coordination per element, the fraction of bonds between like atoms (Ge-Ge,
    Te-Te; 0 in rock salt), the fraction of bond angles within ``tolerance`` degrees
    of 90 or 180 (1 in rock salt, ~0.4 for tetrahedral-like angles spread over
    80-130 degrees) and the fraction not rock-salt-like
    (:func:`studies.gete_analysis.non_rock_salt_fraction`)."""
    from ase.neighborlist import neighbor_list

    from .gete_analysis import non_rock_salt_fraction

    i, j, vectors = neighbor_list("ijD", atoms, cutoff)
    symbols = np.array(atoms.get_chemical_symbols())
    counts = np.bincount(i, minlength=len(atoms))
    coordination = {e: float(counts[symbols == e].mean()) for e in sorted(set(symbols))}
    like = float(np.mean(symbols[i] == symbols[j])) if len(i) else 0.0
    octahedral, angles = 0, 0
    for atom in range(len(atoms)):
        mine = vectors[i == atom]
        if len(mine) < 2:
            continue
        unit = mine / np.linalg.norm(mine, axis=1)[:, None]
        cosines = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
        theta = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
        octahedral += int(np.sum((np.abs(theta - 90.0) <= tolerance) | (theta >= 180.0 - tolerance)))
        angles += len(theta)
    return {"coordination": coordination, "like_bond_fraction": like,
            "octahedral_angle_fraction": octahedral / angles if angles else 0.0,
            "non_rock_salt": non_rock_salt_fraction(atoms), "cutoff": cutoff}


# ------------------------------------------------------------------ errors


def error_table(models: Mapping[str, str], frame_sets: Mapping[str, str]) -> dict[str, dict[str, dict]]:
    """Errors against the reference of every committee on every frame set.

    models: committee name -> model file; frame_sets: set name -> extxyz (energy
    and forces of the reference). Per (committee, set): the committee mean's
    energy RMSE (eV/atom) and force RMSE (eV/A); every member's, with their mean
    and std over members; the committee's mean spread (std over members of the
    predicted energy per atom; RMS over atoms of the norm of the force std vector,
    eV/A); the committee's mean energy error and its std over frames (eV/atom: an
    offset against an error in relative energies); and the RMSE of a constant
    energy (the set's mean), for scale. Each
    frame's symmetry functions are computed once per distinct set of functions."""
    from nnp.calculator import member_model
    from nnp.dataset import read_frames
    from nnp.model import load_model

    loaded = {m: load_model(p) for m, p in models.items()}
    members = {m: [member_model(model, k) for k in range(model.n_members)] for m, model in loaded.items()}
    table: dict[str, dict[str, dict]] = {m: {} for m in models}
    for sname, path in frame_sets.items():
        data = read_frames(path)
        n_frames = len(data.atoms)
        e_true = np.array([data.energies[k] / len(a) for k, a in enumerate(data.atoms)])
        acc = {m: {"e": [], "f": [], "e_std": [], "f_std": [], "e_m": [[] for _ in members[m]],
                   "f_m": [[] for _ in members[m]]} for m in models}
        for k, atoms in enumerate(data.atoms):
            cache: dict[str, Any] = {}
            n = len(atoms)
            for m, model in loaded.items():
                key = model.symmetry.fingerprint()
                if key not in cache:
                    cache[key] = model.symmetry.compute(atoms)
                pred = model.predict_descriptors(cache[key])
                a = acc[m]
                a["e"].append(pred.energy / n - e_true[k])
                a["f"].append(pred.forces - data.forces[k])
                a["e_std"].append(pred.energy_std / n)
                a["f_std"].append(np.linalg.norm(pred.forces_std, axis=1))
                for j, member in enumerate(members[m]):
                    p = member.predict_descriptors(cache[key])
                    a["e_m"][j].append(p.energy / n - e_true[k])
                    a["f_m"][j].append(p.forces - data.forces[k])
        rms = lambda x: float(np.sqrt(np.mean(np.square(np.concatenate([np.ravel(v) for v in x])))))
        for m in models:
            a = acc[m]
            e_members = [rms(v) for v in a["e_m"]]
            f_members = [rms(v) for v in a["f_m"]]
            table[m][sname] = {
                "frames": n_frames, "energy_rmse": rms(a["e"]), "force_rmse": rms(a["f"]),
                "energy_rmse_members": e_members, "force_rmse_members": f_members,
                "energy_rmse_member_mean": float(np.mean(e_members)), "energy_rmse_member_std": float(np.std(e_members)),
                "force_rmse_member_mean": float(np.mean(f_members)), "force_rmse_member_std": float(np.std(f_members)),
                "energy_mean_error": float(np.mean(a["e"])), "energy_error_std": float(np.std(a["e"])),
                "energy_spread": float(np.mean(a["e_std"])), "force_spread": rms(a["f_std"]),
                "energy_constant_rmse": float(np.std(e_true))}
    return table


def compare(table: Mapping[str, Mapping[str, Mapping[str, Any]]], first: str, second: str) -> dict[str, dict]:
    """Per frame set and quantity (energy, force): ``first``, ``second`` or
    ``within noise``, the lower of the two committees when the difference of
    their members' mean RMSEs exceeds the sum of their members' std."""
    out: dict[str, dict] = {}
    for sname in table[first]:
        if sname not in table[second]:
            continue
        out[sname] = {}
        for q in ("energy", "force"):
            a, b = table[first][sname], table[second][sname]
            gap = a[f"{q}_rmse_member_mean"] - b[f"{q}_rmse_member_mean"]
            noise = a[f"{q}_rmse_member_std"] + b[f"{q}_rmse_member_std"]
            out[sname][q] = {"lower": (second if gap > 0 else first) if abs(gap) > noise else "within noise",
                             "difference": gap, "noise": noise}
    return out


def across_runs(table: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str],
                reference: str) -> dict[str, dict]:
    """The committees ``names`` (one per independent run) taken together against
    ``reference``, per frame set and quantity: mean and std over the committees of
    their members' mean RMSE, and the verdict by :func:`compare`'s rule with the
    spread over runs in place of one committee's member spread."""
    out: dict[str, dict] = {}
    for sname in table[reference]:
        out[sname] = {}
        for q in ("energy", "force"):
            values = np.array([table[n][sname][f"{q}_rmse_member_mean"] for n in names])
            ref = table[reference][sname]
            gap = float(values.mean() - ref[f"{q}_rmse_member_mean"])
            noise = float(values.std() + ref[f"{q}_rmse_member_std"])
            out[sname][q] = {"mean": float(values.mean()), "std_over_runs": float(values.std()),
                             "runs": values.tolist(), "difference": gap, "noise": noise,
                             "lower": ("runs" if gap < 0 else reference) if abs(gap) > noise else "within noise"}
    return out


# ------------------------------------------------------------------ report


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per committee and frame set of the comparison JSON: committee
    errors, members' mean +- std, committee spread; then the verdicts."""
    lines = []
    for mname, row in data["errors"].items():
        for sname, r in row.items():
            lines.append(f"{mname} on {sname} ({r['frames']} frames): E {1000 * r['energy_rmse']:.1f} meV/atom "
                         f"(members {1000 * r['energy_rmse_member_mean']:.1f} +- {1000 * r['energy_rmse_member_std']:.1f}), "
                         f"F {r['force_rmse']:.3f} eV/A (members {r['force_rmse_member_mean']:.3f} +- "
                         f"{r['force_rmse_member_std']:.3f})")
    for mname, per_set in data["verdicts"].items():
        for sname, v in per_set.items():
            lines.append(f"{mname} vs NNP-MD on {sname}: energy {v['energy']['lower']}, force {v['force']['lower']}")
    for sname, v in data.get("g_runs_together", {}).items():
        e, f = v["energy"], v["force"]
        lines.append(f"NNP-G (all runs) vs NNP-MD on {sname}: E {1000 * e['mean']:.1f} +- {1000 * e['std_over_runs']:.1f} "
                     f"meV/atom ({e['lower']}), F {f['mean']:.3f} +- {f['std_over_runs']:.3f} eV/A ({f['lower']})")
    return lines


def markdown_tables(data: Mapping[str, Any]) -> str:
    """The error tables of the comparison JSON as markdown: energy RMSE (meV/atom)
    and force RMSE (eV/A) of each committee on each frame set, committee mean, then
    members' mean +- std, then the committee's mean spread."""
    models = list(data["errors"])
    sets = list(data["errors"][models[0]])
    out = []
    for q, unit, scale, fmt in (("energy", "meV/atom", 1000.0, "{:.1f}"), ("force", "eV/A", 1.0, "{:.3f}")):
        out += [f"{q.capitalize()} RMSE ({unit}) against CHGNet: committee mean; members mean +- std; "
                f"committee spread", "",
                "| frame set | frames | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
        for sname in sets:
            cells = []
            for m in models:
                r = data["errors"][m][sname]
                cells.append(f"{fmt.format(scale * r[f'{q}_rmse'])}; {fmt.format(scale * r[f'{q}_rmse_member_mean'])} "
                             f"+- {fmt.format(scale * r[f'{q}_rmse_member_std'])}; "
                             f"{fmt.format(scale * r[f'{q}_spread'])}")
            out.append(f"| {sname} | {data['errors'][models[0]][sname]['frames']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
