"""``gmetad train``: fit a model (or a committee) to extxyz frames.

Steps: read the frames and their descriptors (cached, see :mod:`nnp.dataset`);
split off ``validation_fraction`` of the frames (seeded); standardise G per
element and fit per-element reference energies by least squares on the
training frames; train each committee member with Adam on

    loss = w_E mean_frames((E - E_ref)/N)^2 + w_F mean_components(F - F_ref)^2
           + w_S mean_stress_components(S - S_ref)^2 + l2 sum(W^2)

(energies in eV, forces in eV/A, stress in GPa: the 6 independent components
of the frames that have a reference stress, see :mod:`nnp.dataset`; the stress
term only when ``stress_weight`` > 0) in batches of frames, the learning rate
decaying exponentially from ``learning_rate`` to ``learning_rate_final``; keep
the weights of the epoch with the lowest validation loss and stop after
``patience`` epochs without improvement.

Everything random comes from ``seed``: the split, member k's initial weights
(seed + k) and its bootstrap sample, and the frame order of every epoch (seeded
by seed, member, epoch); the torch operations used (dense layers, index_add on
the CPU) are deterministic. After every epoch a checkpoint ``OUTPUT.ckpt`` is
written atomically; a training started again with the same command resumes
from it and ends with the same model as an uninterrupted one (same machine and
thread count). The checkpoint is deleted once the model file is written.
Outputs beside the model: ``STEM.log.csv`` (one row per epoch; the stress RMSE
columns, GPa, are nan when no frame has a stress, the training one also when the
stress term is off) and ``STEM.loss.png``.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import sys
import time
from typing import Any, Callable, TextIO

import numpy as np
import torch
from ase import units

from biasserver.symmetry import SymmetryFunctions

from .batches import TensorData, batch_stress, predict_batch
from .config import TrainConfig
from .dataset import DataError, FrameDescriptors, data_elements, frame_descriptors
from .model import NNPModel, standard_scaling

LOG_COLUMNS = ("member", "epoch", "learning_rate", "loss", "energy_rmse", "force_rmse",
               "val_loss", "val_energy_rmse", "val_force_rmse", "seconds", "stress_rmse", "val_stress_rmse")

#: eV/A^3 -> GPa
GPA = 1.0 / units.GPa

#: the 6 independent components of a symmetric 3x3 tensor, ASE's Voigt order xx yy zz yz xz xy
_VOIGT = (torch.tensor([0, 1, 2, 1, 0, 0]), torch.tensor([0, 1, 2, 2, 2, 1]))

#: settings added after checkpoints were first written, with the value that reproduces
#: the older training (a checkpoint without them resumes)
_ADDED_SETTINGS = {"stress_key": None, "virial_key": None, "stress_weight": 0.0}

_TORCH_ACTIVATIONS = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "silu": torch.nn.SiLU,
                      "softplus": torch.nn.Softplus}


class CheckpointError(ValueError):
    """A checkpoint belongs to another training; the message names it and what differs."""


class TrainingStopped(Exception):
    """Raised by ``stop_after`` (tests, time-limited jobs): the checkpoint holds the state."""


def output_paths(output: str) -> dict[str, str]:
    """Files a training writes for model file ``output``."""
    stem = os.path.splitext(output)[0]
    return {"model": output, "checkpoint": output + ".ckpt", "log": stem + ".log.csv",
            "plot": stem + ".loss.png"}


# -- data -----------------------------------------------------------------
def load_training_data(paths: list[str], config: TrainConfig, cache_dir: str) \
        -> tuple[SymmetryFunctions, FrameDescriptors, list[dict[str, str]]]:
    """Symmetry functions, descriptors of all frames, and [{path, sha256, frames}]."""
    if not paths:
        raise DataError("no training files given")
    elements: list[str] = []
    if "default" in config.symmetry and not config.symmetry["default"].get("elements"):
        elements = data_elements(paths, config.energy_key, config.forces_key, config.stress_key, config.virial_key)
    symmetry = config.symmetry_functions(elements)
    parts, files = [], []
    for path in paths:
        part, digest = frame_descriptors(path, symmetry, cache_dir, config.energy_key, config.forces_key,
                                         config.stress_key, config.virial_key)
        parts.append(part)
        files.append({"path": os.path.abspath(path), "sha256": digest, "frames": int(part.n_frames),
                      "frames_with_stress": int(part.has_stress.sum())})
    data = FrameDescriptors.concatenate(parts)
    missing = [e for e in symmetry.elements if data.counts[e].sum() == 0]
    if missing:
        raise DataError(f"{', '.join(paths)}: no atom of {', '.join(missing)} in the training frames, "
                        "but the symmetry functions name it; a network for it cannot be trained")
    return symmetry, data, files


def split_frames(n_frames: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) frame indices; at least one validation frame when
    ``fraction`` > 0 and there are two frames or more."""
    order = np.random.default_rng([seed, 0]).permutation(n_frames)
    n_val = int(round(fraction * n_frames))
    if fraction > 0 and n_frames >= 2:
        n_val = min(max(n_val, 1), n_frames - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_scaling(data: FrameDescriptors, frames: np.ndarray) -> tuple[dict, dict, dict]:
    """Per-element mean and std of G over the atoms of ``frames`` (floored, see
    :func:`nnp.model.standard_scaling`), and
    reference energies (eV) by least squares of frame energies on composition."""
    mean, std = {}, {}
    for e in data.elements:
        offset = np.concatenate([[0], np.cumsum(data.counts[e])])
        rows = np.concatenate([np.arange(offset[f], offset[f + 1]) for f in frames])
        mean[e], std[e] = standard_scaling(data.values[e][rows])
    comp = data.composition()[frames].astype(np.float64)
    e_ref_values = np.linalg.lstsq(comp, data.energies[frames], rcond=None)[0]
    return mean, std, {e: float(v) for e, v in zip(data.elements, e_ref_values)}


# -- networks -------------------------------------------------------------
def build_networks(symmetry: SymmetryFunctions, hidden: list[int], activation: str,
                   dtype: torch.dtype, seed: int) -> torch.nn.ModuleDict:
    """One fresh network per element (torch's default initialisation, seeded; the output
    layer scaled by 0.1 with zero bias, so that training starts near the reference energies)."""
    torch.manual_seed(seed)
    nets = {}
    for e in symmetry.elements:
        sizes = [symmetry.size(e), *hidden]
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), _TORCH_ACTIVATIONS[activation]()]
        out = torch.nn.Linear(sizes[-1], 1)
        with torch.no_grad():        # start near E_ref: atomic energies of order 0.01 eV
            out.weight.mul_(0.1)
            out.bias.zero_()
        nets[e] = torch.nn.Sequential(*layers, out).to(dtype)
    return torch.nn.ModuleDict(nets)


def export_layers(nets: torch.nn.ModuleDict) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Weights as float64 numpy layers (W (n_in, n_out), b) per element."""
    out = {}
    for e, net in nets.items():
        out[e] = [(m.weight.detach().to(torch.float64).numpy().T.copy(),
                   m.bias.detach().to(torch.float64).numpy().copy())
                  for m in net if isinstance(m, torch.nn.Linear)]
    return out


def _l2(nets: torch.nn.ModuleDict) -> torch.Tensor:
    return sum((m.weight ** 2).sum() for net in nets.values() for m in net if isinstance(m, torch.nn.Linear))


# -- one member -------------------------------------------------------------
def stress_errors(virials: torch.Tensor, batch) -> torch.Tensor:
    """Squared stress errors (n_s, 6) in GPa^2 of the frames of ``batch`` that have a
    reference stress (6 independent components each)."""
    diff = (batch_stress(virials, batch) - batch.stress)[batch.has_stress] * GPA
    return diff[:, _VOIGT[0], _VOIGT[1]] ** 2


def _evaluate(nets, tensors: TensorData, frames: np.ndarray, config: TrainConfig) -> dict[str, float]:
    """Loss and RMSEs (eV/atom, eV/A, GPa; stress only if some of ``frames`` have one)
    over ``frames`` without updating anything."""
    se_e = se_f = se_s = 0.0
    n_comp = n_stress = 0
    for start in range(0, len(frames), 32):
        batch = tensors.batch(frames[start:start + 32])
        with_stress = bool(batch.has_stress.any())
        energy, forces, *virials = predict_batch(nets, batch, create_graph=False, virial=with_stress)
        se_e += float((((energy.detach() - batch.energy) / batch.n_atoms) ** 2).sum())
        se_f += float(((forces.detach() - batch.forces) ** 2).sum())
        n_comp += forces.numel()
        if with_stress:
            err_s = stress_errors(virials[0].detach(), batch)
            se_s += float(err_s.sum())
            n_stress += err_s.numel()
    mse_e, mse_f = se_e / len(frames), se_f / n_comp
    loss = config.energy_weight * mse_e + config.force_weight * mse_f + config.l2 * float(_l2(nets).detach())
    out = {"loss": loss, "energy_rmse": mse_e ** 0.5, "force_rmse": mse_f ** 0.5}
    if n_stress:
        out["stress_rmse"] = (se_s / n_stress) ** 0.5
        if config.stress_weight > 0:
            out["loss"] = loss + config.stress_weight * se_s / n_stress
    return out


def _train_epoch(nets, optimizer, tensors: TensorData, frames: np.ndarray, config: TrainConfig) -> dict[str, float]:
    se_e = se_f = se_s = loss_sum = 0.0
    n_comp = n_stress = 0
    for start in range(0, len(frames), config.batch_size):
        batch = tensors.batch(frames[start:start + config.batch_size])
        with_stress = config.stress_weight > 0 and bool(batch.has_stress.any())
        energy, forces, *virials = predict_batch(nets, batch, create_graph=True, virial=with_stress)
        err_e = ((energy - batch.energy) / batch.n_atoms) ** 2
        err_f = (forces - batch.forces) ** 2
        loss = config.energy_weight * err_e.mean() + config.force_weight * err_f.mean()
        if with_stress:
            err_s = stress_errors(virials[0], batch)
            loss = loss + config.stress_weight * err_s.mean()
            se_s += float(err_s.detach().sum())
            n_stress += err_s.numel()
        if config.l2 > 0:
            loss = loss + config.l2 * _l2(nets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        se_e += float(err_e.detach().sum())
        se_f += float(err_f.detach().sum())
        n_comp += err_f.numel()
        loss_sum += float(loss.detach()) * len(batch.n_atoms)
    out = {"loss": loss_sum / len(frames), "energy_rmse": (se_e / len(frames)) ** 0.5,
           "force_rmse": (se_f / n_comp) ** 0.5}
    if n_stress:
        out["stress_rmse"] = (se_s / n_stress) ** 0.5
    return out


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Exponential decay from learning_rate (epoch 0) to learning_rate_final (last epoch)."""
    span = max(config.epochs - 1, 1)
    return config.learning_rate * (config.learning_rate_final / config.learning_rate) ** (epoch / span)


def member_frames(train: np.ndarray, member: int, config: TrainConfig) -> np.ndarray:
    """The training frames of committee member ``member`` (a bootstrap sample if asked)."""
    if not config.bootstrap:
        return train
    rng = np.random.default_rng([config.seed, member, 1])
    return np.sort(rng.choice(train, size=len(train), replace=True))


# -- checkpoints --------------------------------------------------------------
def _state_to_tensors(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def save_checkpoint(path: str, state: dict) -> None:
    """Atomic write: temporary file, then rename over the old checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, signature: dict) -> dict:
    """Read a checkpoint and check that it belongs to the training ``signature`` describes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises several types)
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}); "
                              "delete it or train with --fresh") from None
    theirs = dict(state.get("signature", {}))
    if isinstance(theirs.get("settings"), dict):
        theirs["settings"] = {**_ADDED_SETTINGS, **theirs["settings"]}
    for key in signature:
        if theirs.get(key) != signature[key]:
            what = {"symmetry_fingerprint": "symmetry functions", "files": "training files",
                    "settings": "training settings"}.get(key, key)
            detail = ""
            if key == "settings":
                diff = sorted(k for k in signature[key] if theirs.get(key, {}).get(k) != signature[key][k])
                detail = f" ({', '.join(diff)})"
            elif key == "symmetry_fingerprint":
                detail = f" (checkpoint {theirs.get(key)}, now {signature[key]})"
            raise CheckpointError(f"{path}: checkpoint of a different training: the {what} differ{detail}; "
                                  "delete it or train with --fresh")
    return state


# -- the whole training -------------------------------------------------------
def _progress(stream: TextIO, member: int, n_members: int, row: dict, epochs: int, best: bool) -> None:
    val = ""
    stress = lambda key: f" S {row[key]:.3f} GPa" if row[key] == row[key] else ""   # not NaN
    if row["val_loss"] == row["val_loss"]:   # not NaN
        val = (f" | val E {1000 * row['val_energy_rmse']:7.2f} meV/atom"
               f" F {row['val_force_rmse']:.4f} eV/A{stress('val_stress_rmse')}{' *' if best else ''}")
    print(f"[{member + 1}/{n_members}] epoch {row['epoch']:4d}/{epochs}  loss {row['loss']:.3e}"
          f"  E {1000 * row['energy_rmse']:7.2f} meV/atom  F {row['force_rmse']:.4f} eV/A{stress('stress_rmse')}{val}"
          f"  lr {row['learning_rate']:.1e}  {row['seconds']:.1f} s", file=stream, flush=True)


def _write_log(path: str, history: list[dict]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import ase

    try:
        from importlib.metadata import version
        gmetad = version("gmetad")
    except Exception:  # noqa: BLE001 (not installed: running from a checkout)
        gmetad = "unknown"
    return {"gmetad": gmetad, "torch": str(torch.__version__), "numpy": str(np.__version__), "ase": str(ase.__version__),
            "python": platform.python_version()}


def train(paths: list[str], output: str, config: TrainConfig, fresh: bool = False,
          stream: TextIO = sys.stderr, stop_after: Callable[[int, int], bool] | None = None,
          plot: bool = True) -> NNPModel:
    """Train a model (committee of ``config.committee``) on ``paths`` and write it to ``output``.

    fresh: ignore (and replace) an existing checkpoint. stop_after(member, epoch):
    called after every checkpoint; True stops the training with TrainingStopped
    as a kill would (tests, time-limited jobs). Returns the model written.
    """
    out = output_paths(os.fspath(output))
    cache_dir = config.cache_dir or os.path.join(os.path.dirname(os.path.abspath(out["model"])), ".nnp-cache")
    dtype = torch.float64 if config.precision == "float64" else torch.float32
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        symmetry, data, files = load_training_data(list(paths), config, cache_dir)
        train_idx, val_idx = split_frames(data.n_frames, config.validation_fraction, config.seed)
        mean, std, e_ref = fit_scaling(data, train_idx)
        tensors = TensorData(data, mean, std, e_ref, dtype)
        signature = {"symmetry_fingerprint": symmetry.fingerprint(),
                     "files": [[f["sha256"], f["frames"]] for f in files],
                     "settings": config.training_settings()}
        n_stress = int(data.has_stress.sum())
        stress_note = (f"; {n_stress} frames with stress" + ("" if config.stress_weight > 0 else " (stress term off)")
                       if n_stress else "")
        print(f"training on {len(train_idx)} frames, validating on {len(val_idx)} "
              f"({data.n_frames} frames from {len(files)} file(s)){stress_note}; {symmetry!r}; cache {cache_dir}",
              file=stream, flush=True)
        if config.stress_weight > 0 and not n_stress:
            print("warning: stress_weight > 0 but no frame has a stress (with a cell periodic in 3D): "
                  "the stress term does nothing", file=stream, flush=True)

        state: dict[str, Any] = {"signature": signature, "finished": [], "history": [], "member": 0}
        if os.path.exists(out["checkpoint"]) and not fresh:
            state = load_checkpoint(out["checkpoint"], signature)
            print(f"resuming from {out['checkpoint']}: member {state['member'] + 1}, "
                  f"epoch {state.get('epoch', 0)}", file=stream, flush=True)
        for member in range(state["member"], config.committee):
            _train_member(member, state, symmetry, tensors, train_idx, val_idx, config, dtype, out,
                          stream, stop_after)

        members = [{e: [(w.numpy().copy(), b.numpy().copy()) for w, b in layers]
                    for e, layers in finished["layers"].items()} for finished in state["finished"]]
        provenance = {
            "files": files, "settings": config.training_settings(), "config_file": config.path,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(), "frames": {"train": int(len(train_idx)), "validation": int(len(val_idx))},
            "members": [{k: v for k, v in finished.items() if k != "layers"} for finished in state["finished"]],
        }
        model = NNPModel(symmetry, tuple(config.hidden), config.activation, mean, std, e_ref, members, provenance)
        model.save(out["model"])
        _write_log(out["log"], state["history"])
        if plot:
            from .plots import loss_curve
            loss_curve(state["history"], out["plot"])
        os.remove(out["checkpoint"])
        return model
    finally:
        torch.set_num_threads(previous_threads)


def _train_member(member: int, state: dict, symmetry, tensors: TensorData, train_idx, val_idx,
                  config: TrainConfig, dtype, out: dict, stream: TextIO, stop_after) -> None:
    nets = build_networks(symmetry, config.hidden, config.activation, dtype, config.seed + member)
    optimizer = torch.optim.Adam(nets.parameters(), lr=config.learning_rate)
    frames = member_frames(train_idx, member, config)
    selection = val_idx if len(val_idx) else frames      # no validation set: select on training frames
    if state["member"] == member and "nets" in state:
        nets.load_state_dict(state["nets"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, best, bad = int(state["epoch"]), dict(state["best"]), int(state["bad_epochs"])
    else:
        epoch, best, bad = 0, {"loss": float("inf"), "epoch": -1, "nets": _state_to_tensors(nets.state_dict())}, 0
    while epoch < config.epochs and bad < config.patience:
        started = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = np.random.default_rng([config.seed, member, epoch, 2]).permutation(frames)
        fit = _train_epoch(nets, optimizer, tensors, order, config)
        check = _evaluate(nets, tensors, selection, config)
        epoch += 1
        improved = check["loss"] < best["loss"]
        if improved:
            best = {"loss": check["loss"], "epoch": epoch, "nets": _state_to_tensors(nets.state_dict())}
            bad = 0
        else:
            bad += 1
        nan = float("nan")
        row = {"member": member, "epoch": epoch, "learning_rate": lr, "stress_rmse": nan, **fit,
               "val_loss": check["loss"] if len(val_idx) else nan,
               "val_energy_rmse": check["energy_rmse"] if len(val_idx) else nan,
               "val_force_rmse": check["force_rmse"] if len(val_idx) else nan,
               "val_stress_rmse": check.get("stress_rmse", nan) if len(val_idx) else nan,
               "seconds": time.perf_counter() - started}
        state["history"].append(row)
        _progress(stream, member, config.committee, row, config.epochs, improved and len(val_idx) > 0)
        state.update(member=member, epoch=epoch, nets=_state_to_tensors(nets.state_dict()),
                     optimizer=optimizer.state_dict(), best=best, bad_epochs=bad)
        save_checkpoint(out["checkpoint"], state)
        _write_log(out["log"], state["history"])
        if stop_after is not None and stop_after(member, epoch):
            raise TrainingStopped(f"stopped after member {member + 1}, epoch {epoch}")
    nets.load_state_dict(best["nets"])
    val = _evaluate(nets, tensors, val_idx, config) if len(val_idx) else {}
    layers = {e: [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in ls]
              for e, ls in export_layers(nets).items()}
    state["finished"].append({"layers": layers, "seed": config.seed + member, "best_epoch": int(best["epoch"]),
                              "epochs": int(epoch), "training_frames": int(len(np.unique(frames))),
                              **{f"val_{k}": float(v) for k, v in val.items()}})
    for key in ("nets", "optimizer", "best", "bad_epochs", "epoch"):
        state.pop(key, None)
    state["member"] = member + 1
    save_checkpoint(out["checkpoint"], state)
    if len(val_idx):
        stress = f", S {val['stress_rmse']:.3f} GPa" if "stress_rmse" in val else ""
        print(f"[{member + 1}/{config.committee}] best epoch {best['epoch']}: val E "
              f"{1000 * val['energy_rmse']:.2f} meV/atom, F {val['force_rmse']:.4f} eV/A{stress}", file=stream,
              flush=True)
