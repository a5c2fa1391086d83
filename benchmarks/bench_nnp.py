#!/usr/bin/env python
"""Benchmark of the NNP (package nnp; not a test).

Inference on Si64 (diamond, rattled by 0.05 A), one thread, best of --repeat runs:

- the NNP (default 26 symmetry functions -> 30-30 tanh -> 1): energy and forces
  end to end (``NNPModel.predict``), and its parts: ``SymmetryFunctions.compute``
  (neighbour list + C values and derivatives), the networks' energies and dE/dG
  (numpy float64), ``Descriptors.forces_virial``;
- matscipy's Stillinger-Weber (the calculator of the examples): energy + forces;
- the same network in torch, forces by autograd through the positions (symmetry
  functions in torch, ``torch_acsf`` of bench_symmetry.py, on the C neighbour
  list and a numpy triplet list), float64; checked against the NNP before timing.

Training throughput: frames of Stillinger-Weber Si64 MD at 1200 K (made once and
kept in benchmarks/.cache/), trained for a few epochs with the default settings
(batch 8, float32) at 1 and 2 torch threads; frames per second of one epoch
(training steps + validation) for growing numbers of frames. ``--full`` also times
500 frames x 200 epochs (early stopping off) with the default settings.

Usage:

    python benchmarks/bench_nnp.py [--quick] [--full] [--repeat 50]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")      # the C kernels: one thread (read at load)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import torch  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from bench_symmetry import best_of, torch_acsf, triplet_list  # noqa: E402
from biasserver.symmetry import SymmetryFunctions  # noqa: E402
from drivers.calculators import make_calculator  # noqa: E402
from nnp.config import load_config  # noqa: E402
from nnp.dataset import frame_descriptors  # noqa: E402
from nnp.train import train  # noqa: E402

CACHE = os.path.join(HERE, ".cache")


def si64():
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    return atoms


def sw_frames(n_frames: int) -> str:
    """extxyz of n_frames of SW Si64 NVE MD (1200 K start, a frame every 5 steps of 2 fs), cached."""
    path = os.path.join(CACHE, f"sw_si64_{n_frames}.extxyz")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
    atoms.calc = make_calculator("sw")
    rng = np.random.default_rng(1)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * 1200.0)
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    frames = []
    for _ in range(n_frames):
        dyn.run(5)
        f = atoms.copy()
        f.calc = SinglePointCalculator(f, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(f)
    write(path + ".tmp", frames, format="extxyz")
    os.replace(path + ".tmp", path)
    return path


def trained_model(frames_path: str, workdir: str):
    config = load_config(None, epochs=30, seed=0, threads=1, cache_dir=os.path.join(CACHE, "descriptors"))
    with open(os.devnull, "w") as quiet:
        return train([frames_path], os.path.join(workdir, "model.pt"), config, stream=quiet, plot=False)


def torch_network(model, dtype=torch.float64):
    """The model's first network as a torch module (same float64 weights)."""
    layers = []
    for w, b in model.members[0]["Si"][:-1]:
        lin = torch.nn.Linear(*w.shape).to(dtype)
        lin.weight.data = torch.from_numpy(w.T.copy())
        lin.bias.data = torch.from_numpy(b.copy())
        layers += [lin, torch.nn.Tanh()]
    w, b = model.members[0]["Si"][-1]
    lin = torch.nn.Linear(*w.shape).to(dtype)
    lin.weight.data = torch.from_numpy(w.T.copy())
    lin.bias.data = torch.from_numpy(b.copy())
    return torch.nn.Sequential(*layers, lin)


def inference(model, repeat: int) -> dict[str, float]:
    torch.set_num_threads(1)
    atoms = si64()
    sf = model.symmetry
    rows = {}
    rows["NNP: energy + forces (predict, end to end)"] = best_of(lambda: model.predict(atoms), repeat, 10)
    rows["  symmetry functions + derivatives (compute)"] = best_of(lambda: sf.compute(atoms), repeat, 10)
    desc = sf.compute(atoms)
    rows["  networks: energies and dE/dG (numpy float64)"] = best_of(
        lambda: model.member_gradients(desc.values), repeat, 10)
    _, grads = model.member_gradients(desc.values)
    rows["  forces and virial (Descriptors.forces_virial)"] = best_of(
        lambda: desc.forces_virial(grads[0]), repeat, 10)

    sw = atoms.copy()
    sw.calc = make_calculator("sw")

    def sw_eval():                                     # a fresh calculation every time
        sw.calc.calculate(sw, ["energy", "forces"], ["positions"])

    rows["Stillinger-Weber (matscipy): energy + forces"] = best_of(sw_eval, repeat, 10)

    net = torch_network(model)
    mean = torch.from_numpy(model.mean["Si"])
    std = torch.from_numpy(model.std["Si"])
    e_ref = model.e_ref["Si"]
    n = len(atoms)

    def torch_autograd():
        nl = sf.neighbour_list(atoms)
        centre, pa, pb = (torch.from_numpy(x) for x in triplet_list(nl, nl.vectors, sf.cutoff))
        first = torch.from_numpy(nl.first.astype(np.int64))
        second = torch.from_numpy(nl.second.astype(np.int64))
        pos0 = torch.from_numpy(atoms.positions)
        shifts = torch.from_numpy(nl.vectors) - (pos0[second] - pos0[first])   # periodic images
        pos = pos0.clone().requires_grad_(True)
        vectors = pos[second] - pos[first] + shifts
        g = torch_acsf(torch, vectors, first, centre, pa, pb, n, sf.cutoff)
        energy = net((g - mean) / std).sum() + n * e_ref
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad.numpy()

    energy, forces = torch_autograd()
    pred = model.predict(atoms)
    err_e = abs(energy - pred.energy) / abs(pred.energy)
    err_f = np.abs(forces - pred.forces).max() / np.abs(pred.forces).max()
    print(f"# torch autograd vs NNP on Si64: energy {err_e:.1e}, forces {err_f:.1e} (relative)", file=sys.stderr)
    if max(err_e, err_f) > 1e-8:
        raise SystemExit("torch autograd and the NNP disagree beyond 1e-8: not timing")
    rows["same network in torch, forces by autograd through positions"] = best_of(torch_autograd, repeat, 10)
    return rows


def training(frame_counts: list[int], epochs: int, threads: list[int]) -> list[dict]:
    """Seconds per epoch and frames per second for each number of frames and thread count."""
    out = []
    biggest = sw_frames(max(frame_counts))
    frames = read(biggest, ":")
    for n in frame_counts:
        path = os.path.join(CACHE, f"sw_si64_{max(frame_counts)}_first{n}.extxyz")
        if not os.path.exists(path):
            write(path, frames[:n], format="extxyz")
        for t in threads:
            config = load_config(None, epochs=epochs, patience=epochs, seed=0, threads=t,
                                 cache_dir=os.path.join(CACHE, "descriptors"))
            with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
                frame_descriptors(path, SymmetryFunctions.default(["Si"]), config.cache_dir)  # cache them
                start = time.perf_counter()
                train([path], os.path.join(tmp, "m.pt"), config, stream=quiet, plot=False, fresh=True)
                total = time.perf_counter() - start
                log = np.genfromtxt(os.path.join(tmp, "m.log.csv"), delimiter=",", names=True)
            per_epoch = float(np.median(np.atleast_1d(log["seconds"])))
            out.append({"frames": n, "threads": t, "epochs": epochs, "total_s": total,
                        "epoch_s": per_epoch, "frames_per_s": n / per_epoch})
            print(f"# {n} frames, {t} thread(s): {per_epoch:.3f} s/epoch, {n / per_epoch:.0f} frames/s, "
                  f"whole run {total:.1f} s", file=sys.stderr, flush=True)
    return out


def full_target() -> dict:
    """500 SW Si64 frames x 200 epochs, default settings (one torch thread), early stopping off."""
    path = sw_frames(500)
    config = load_config(None, epochs=200, patience=200, seed=0, cache_dir=os.path.join(CACHE, "descriptors"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model = train([path], os.path.join(tmp, "m.pt"), config, stream=sys.stderr, plot=False)
        total = time.perf_counter() - start
    member = model.provenance["members"][0]
    return {"seconds": total, "val_energy_rmse": member["val_energy_rmse"], "val_force_rmse": member["val_force_rmse"]}


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small training sets (CI smoke run)")
    parser.add_argument("--full", action="store_true", help="also 500 frames x 200 epochs (about 10 minutes)")
    parser.add_argument("--repeat", type=int, default=50, help="runs per inference timing (best is kept)")
    args = parser.parse_args()
    repeat = 5 if args.quick else args.repeat
    print(f"# {machine()}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        model = trained_model(sw_frames(40 if args.quick else 100), tmp)
    rows = inference(model, repeat)
    sw_ms = rows["Stillinger-Weber (matscipy): energy + forces"]
    print("\n| Si64, one thread | ms | vs NNP |\n|---|---:|---:|")
    nnp_ms = rows["NNP: energy + forces (predict, end to end)"]
    for name, ms in rows.items():
        print(f"| {name} | {ms:.3f} | {ms / nnp_ms:.2f} |")
    print(f"\nNNP is {sw_ms / nnp_ms:.1f}x faster than SW; "
          f"{rows['same network in torch, forces by autograd through positions'] / nnp_ms:.1f}x faster than torch autograd.")
    d = model.symmetry.compute(si64())
    print(f"float32 derivatives per Si64 frame: {d.derivatives['Si'].astype(np.float32).nbytes / 1e6:.2f} MB")

    counts = [20, 40] if args.quick else [50, 100, 200, 400]
    results = training(counts, 2 if args.quick else 5, [1, 2])
    print("\n| frames | threads | s per epoch | frames/s |\n|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['frames']} | {r['threads']} | {r['epoch_s']:.3f} | {r['frames_per_s']:.0f} |")
    best = max((r for r in results if r["frames"] == max(counts)), key=lambda r: r["frames_per_s"])
    print(f"\nextrapolated 500 frames x 200 epochs: {500 * 200 / best['frames_per_s'] / 60:.1f} min "
          f"(from {max(counts)} frames, {best['threads']} thread(s))")
    if args.full:
        full = full_target()
        print(f"measured 500 frames x 200 epochs (one torch thread): {full['seconds'] / 60:.1f} min; validation "
              f"{1000 * full['val_energy_rmse']:.2f} meV/atom, {full['val_force_rmse']:.3f} eV/A")


if __name__ == "__main__":
    main()
