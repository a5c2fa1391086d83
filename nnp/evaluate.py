"""``gmetad test``: a model's errors on reference frames.

Reports energy per atom (eV/atom) and force (eV/A) RMSE and MAE, forces also per
element, stress (GPa, the 6 independent components) RMSE and MAE over the frames
that have a reference stress (see :mod:`nnp.dataset`), and for a committee
how its spread (std over members) relates to the true error: Pearson and
Spearman correlation of spread and absolute error (per frame for energy, per
atom for the force vector) and the RMS error in bins of the spread (a
calibrated committee has points near error = spread). Writes a JSON summary, a
parity plot and, for committees, the uncertainty plot.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

import numpy as np

from ase import units

from .dataset import read_frames
from .model import NNPModel, load_model

#: eV/A^3 -> GPa
GPA = 1.0 / units.GPa

#: ASE's Voigt order xx yy zz yz xz xy as (row, column) indices
_VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


def _stats(err: np.ndarray) -> dict[str, float]:
    err = np.asarray(err, dtype=np.float64).ravel()
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), "count": int(err.size)}


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def _correlations(spread: np.ndarray, error: np.ndarray) -> dict[str, float]:
    if len(spread) < 3 or np.ptp(spread) == 0 or np.ptp(error) == 0:
        return {"pearson": None, "spearman": None}   # undefined (constant spread or error)
    return {"pearson": float(np.corrcoef(spread, error)[0, 1]),
            "spearman": float(np.corrcoef(_rank(spread), _rank(error))[0, 1])}


def _bins(spread: np.ndarray, error: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-count bins of ``spread``: mean spread, RMS error and count per bin."""
    order = np.argsort(spread, kind="stable")
    out: dict[str, list] = {"std": [], "rms_error": [], "count": []}
    for chunk in np.array_split(order, min(n_bins, len(order))):
        if len(chunk):
            out["std"].append(float(spread[chunk].mean()))
            out["rms_error"].append(float(np.sqrt(np.mean(error[chunk] ** 2))))
            out["count"].append(int(len(chunk)))
    return out


def evaluate(model: NNPModel | str, paths: list[str], energy_key: str = "energy",
             forces_key: str = "forces", stress_key: str | None = None,
             virial_key: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, raw arrays) of ``model`` on the frames of ``paths``; stress errors
    when some frames have a reference stress (keys as in :func:`nnp.dataset.read_frames`)."""
    model = load_model(model)
    e_true, e_pred, e_std, n_atoms = [], [], [], []
    s_true, s_pred = [], []
    f_true: dict[str, list] = {e: [] for e in model.elements}
    f_pred: dict[str, list] = {e: [] for e in model.elements}
    f_std: dict[str, list] = {e: [] for e in model.elements}
    for path in paths:
        frames = read_frames(path, energy_key, forces_key, stress_key, virial_key)
        for k, atoms in enumerate(frames.atoms):
            try:
                model.check_atoms(atoms)
            except ValueError as err:
                raise ValueError(f"{path}, frame {k}: {err}") from None
            pred = model.predict(atoms)
            n = len(atoms)
            n_atoms.append(n)
            e_true.append(frames.energies[k] / n)
            e_pred.append(pred.energy / n)
            e_std.append(pred.energy_std / n)
            if frames.has_stress[k]:
                stress = -pred.virial / atoms.get_volume()
                s_pred.append(0.5 * (stress + stress.T)[_VOIGT] * GPA)
                s_true.append(frames.stress[k][_VOIGT] * GPA)
            symbols = np.array(atoms.get_chemical_symbols())
            for e in model.elements:
                mask = symbols == e
                f_true[e].append(frames.forces[k][mask])
                f_pred[e].append(pred.forces[mask])
                f_std[e].append(pred.forces_std[mask])
    e_true, e_pred, e_std = np.array(e_true), np.array(e_pred), np.array(e_std)
    f_true = {e: np.concatenate(v) for e, v in f_true.items() if sum(len(x) for x in v)}
    f_pred = {e: np.concatenate(f_pred[e]) for e in f_true}
    f_std = {e: np.concatenate(f_std[e]) for e in f_true}
    all_err = np.concatenate([f_pred[e] - f_true[e] for e in f_true])
    summary: dict[str, Any] = {
        "model": model.name, "files": [os.path.abspath(p) for p in paths], "frames": int(len(e_true)),
        "atoms": int(np.sum(n_atoms)), "committee": model.n_members,
        "energy_per_atom": {**_stats(e_pred - e_true), "unit": "eV/atom"},
        "energy_per_atom_constant": {**_stats(e_true - e_true.mean()), "unit": "eV/atom",
                                     "note": "a constant predictor (the mean), for comparison"},
        "forces": {**_stats(all_err), "unit": "eV/A"},
        "forces_per_element": {e: {**_stats(f_pred[e] - f_true[e]), "unit": "eV/A"} for e in f_true},
    }
    raw = {"energy_true": e_true, "energy_pred": e_pred, "forces_true": f_true, "forces_pred": f_pred}
    if s_true:
        s_true, s_pred = np.array(s_true), np.array(s_pred)
        summary["stress"] = {**_stats(s_pred - s_true), "frames": int(len(s_true)), "unit": "GPa",
                             "reference_rms": float(np.sqrt(np.mean(s_true ** 2))),
                             "note": "components xx yy zz yz xz xy of the frames with a reference stress"}
        raw.update(stress_true=s_true, stress_pred=s_pred)
    if model.n_members > 1:
        e_abs = np.abs(e_pred - e_true)
        atom_err = np.concatenate([np.linalg.norm(f_pred[e] - f_true[e], axis=1) for e in f_true])
        atom_std = np.concatenate([np.linalg.norm(f_std[e], axis=1) for e in f_true])
        summary["uncertainty"] = {
            "energy_per_atom": {**_correlations(e_std, e_abs), "mean_std": float(e_std.mean()),
                                "bins": _bins(e_std, e_abs), "unit": "eV/atom"},
            "forces": {**_correlations(atom_std, atom_err), "mean_std": float(atom_std.mean()),
                       "bins": _bins(atom_std, atom_err), "unit": "eV/A",
                       "note": "per atom: norm of the force std vector against norm of the force error"},
        }
    return summary, raw


def write_report(summary: dict, raw: dict, prefix: str, plots: bool = True) -> dict[str, str]:
    """PREFIX.json, PREFIX.parity.png and (committees) PREFIX.uncertainty.png; returns the paths."""
    paths = {"json": prefix + ".json"}
    with open(paths["json"], "w") as handle:
        json.dump(summary, handle, indent=2)
    if plots:
        from . import plots as figures

        paths["parity"] = prefix + ".parity.png"
        figures.parity(raw["energy_true"], raw["energy_pred"], raw["forces_true"], raw["forces_pred"],
                       paths["parity"])
        if "uncertainty" in summary:
            paths["uncertainty"] = prefix + ".uncertainty.png"
            bins = {name: {**u["bins"], "unit": u["unit"]} for name, u in summary["uncertainty"].items()}
            figures.uncertainty(bins, paths["uncertainty"])
    return paths


def print_summary(summary: dict, stream: TextIO = sys.stdout) -> None:
    """A short table of the errors."""
    e, f = summary["energy_per_atom"], summary["forces"]
    print(f"{summary['model']}: {summary['frames']} frames, {summary['atoms']} atoms, "
          f"committee of {summary['committee']}", file=stream)
    print(f"  energy  RMSE {1000 * e['rmse']:9.3f} meV/atom  MAE {1000 * e['mae']:9.3f} meV/atom"
          f"  (constant: RMSE {1000 * summary['energy_per_atom_constant']['rmse']:.3f})", file=stream)
    print(f"  forces  RMSE {f['rmse']:9.4f} eV/A      MAE {f['mae']:9.4f} eV/A", file=stream)
    for el, s in summary["forces_per_element"].items():
        print(f"    {el:3s}   RMSE {s['rmse']:9.4f} eV/A      MAE {s['mae']:9.4f} eV/A", file=stream)
    if "stress" in summary:
        s = summary["stress"]
        print(f"  stress  RMSE {s['rmse']:9.4f} GPa       MAE {s['mae']:9.4f} GPa"
              f"  ({s['frames']} frames with stress; reference RMS {s['reference_rms']:.3f} GPa)", file=stream)
    for name, u in summary.get("uncertainty", {}).items():
        fmt = lambda r: "n/a" if r is None else f"{r:.3f}"
        print(f"  committee std vs error ({name}): Pearson {fmt(u['pearson'])}, Spearman {fmt(u['spearman'])}, "
              f"mean std {u['mean_std']:.4g} {u['unit']}", file=stream)
