"""NNP training on Stillinger-Weber Si64 frames made here: accuracy, resume, cache, CLI, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.verlet import VelocityVerlet

from drivers.calculators import make_calculator
from nnp import NNPModel
from nnp.config import TrainConfigError, load_config
from nnp.dataset import DataError, read_frames
from nnp.evaluate import evaluate
from nnp.train import CheckpointError, TrainingStopped, output_paths, train

REPO = Path(__file__).resolve().parents[1]
N_FRAMES = 40


def sw_md_frames(n_frames: int, temperature: float, seed: int, stride: int = 4):
    """Frames of a short NVE MD of diamond Si64 with Stillinger-Weber (energies, forces)."""
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
    atoms.calc = make_calculator("sw")
    rng = np.random.default_rng(seed)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * temperature)
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    frames = []
    for _ in range(n_frames):
        dyn.run(stride)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def sw_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sw") / "sw.extxyz"
    write(path, sw_md_frames(N_FRAMES, 1500.0, seed=1), format="extxyz")
    return path


def quiet():
    return open(os.devnull, "w")


def test_training_beats_a_constant_and_reaches_the_bound(sw_file, tmp_path):
    config = load_config(None, epochs=60, patience=60, seed=3, cache_dir=str(tmp_path / "cache"))
    with quiet() as stream:
        model = train([str(sw_file)], str(tmp_path / "model.pt"), config, stream=stream)
    member = model.provenance["members"][0]
    # SW Si64 MD at 1500 K, 36 training frames, 60 epochs: 0.7-1.2 meV/atom and 0.07-0.09 eV/A
    # (seeds 3-6); the constant predictor: 18 meV/atom
    assert member["val_energy_rmse"] < 0.004       # eV/atom
    assert member["val_force_rmse"] < 0.2          # eV/A (reference forces: RMS 0.97 eV/A)
    summary, _ = evaluate(model, [str(sw_file)])
    assert summary["energy_per_atom"]["rmse"] < 0.3 * summary["energy_per_atom_constant"]["rmse"]
    forces = np.concatenate(read_frames(sw_file).forces)
    assert summary["forces"]["rmse"] < 0.3 * np.sqrt(np.mean(forces ** 2))
    # outputs and provenance
    out = output_paths(str(tmp_path / "model.pt"))
    assert not os.path.exists(out["checkpoint"]) and os.path.getsize(out["plot"]) > 0
    log = Path(out["log"]).read_text().splitlines()
    assert log[0].startswith("member,epoch,learning_rate,loss") and len(log) == 1 + member["epochs"]
    files = model.provenance["files"]
    assert files[0]["path"] == str(sw_file) and len(files[0]["sha256"]) == 64 and files[0]["frames"] == N_FRAMES
    assert model.provenance["settings"]["force_weight"] == 0.1
    assert {"torch", "numpy", "ase", "python"} <= set(model.provenance["versions"])
    # the saved file predicts bit-identically without the training data
    loaded = NNPModel.load(tmp_path / "model.pt")
    atoms = read(sw_file, index=7)
    a, b = model.predict(atoms), loaded.predict(atoms)
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.forces, b.forces)


def _same_models(a: NNPModel, b: NNPModel) -> None:
    assert a.n_members == b.n_members
    for ma, mb in zip(a.members, b.members):
        for e in a.elements:
            for (wa, ba), (wb, bb) in zip(ma[e], mb[e]):
                np.testing.assert_array_equal(wa, wb)
                np.testing.assert_array_equal(ba, bb)
    assert a.provenance["members"] == b.provenance["members"]


def test_stopped_training_resumes_to_the_same_model(sw_file, tmp_path):
    config = load_config(None, epochs=5, committee=2, bootstrap=True, seed=11, cache_dir=str(tmp_path / "cache"))
    with quiet() as stream:
        whole = train([str(sw_file)], str(tmp_path / "whole.pt"), config, stream=stream)
        target = str(tmp_path / "resumed.pt")
        for stop in [(0, 2), (0, 5), (1, 3)]:      # mid-member, end of a member, second member
            with pytest.raises(TrainingStopped):
                train([str(sw_file)], target, config, stream=stream, stop_after=lambda m, e, s=stop: (m, e) == s)
            assert os.path.exists(target + ".ckpt")
        resumed = train([str(sw_file)], target, config, stream=stream)
    _same_models(whole, resumed)
    log = Path(output_paths(target)["log"]).read_text().splitlines()
    assert len(log) == 1 + 10      # each epoch logged once, though three runs were stopped


def test_checkpoint_of_other_symmetry_functions_is_refused(sw_file, tmp_path):
    target = str(tmp_path / "m.pt")
    config = load_config(None, epochs=3, cache_dir=str(tmp_path / "cache"))
    with quiet() as stream, pytest.raises(TrainingStopped):
        train([str(sw_file)], target, config, stream=stream, stop_after=lambda m, e: e == 1)
    other = load_config(None, epochs=3, symmetry={"default": {"cutoff": 5.0}}, cache_dir=str(tmp_path / "cache"))
    with quiet() as stream, pytest.raises(CheckpointError, match=r"m\.pt\.ckpt: checkpoint of a different "
                                                                  r"training: the symmetry functions differ"):
        train([str(sw_file)], target, other, stream=stream)
    with quiet() as stream:         # --fresh starts over
        model = train([str(sw_file)], target, other, stream=stream, fresh=True)
    assert model.symmetry.cutoff == 5.0


def test_descriptor_cache_is_keyed_by_content_and_checked(sw_file, tmp_path):
    cache = tmp_path / "cache"
    data = tmp_path / "frames.extxyz"
    data.write_bytes(sw_file.read_bytes())
    config = load_config(None, epochs=1, cache_dir=str(cache))
    with quiet() as stream:
        first = train([str(data)], str(tmp_path / "a.pt"), config, stream=stream, plot=False)
    (made,) = sorted(cache.iterdir())
    stamp = made.stat().st_mtime_ns
    with quiet() as stream:
        again = train([str(data)], str(tmp_path / "b.pt"), config, stream=stream, plot=False)
    assert sorted(cache.iterdir()) == [made] and made.stat().st_mtime_ns == stamp   # reused
    _same_models(first, again)
    frames = read(data, ":")
    write(data, frames[:-1], format="extxyz")                       # the content changes
    with quiet() as stream:
        train([str(data)], str(tmp_path / "c.pt"), config, stream=stream, plot=False)
    assert len(list(cache.iterdir())) == 2
    # a cache file whose record disagrees with its name is refused, naming it
    other = sorted(p for p in cache.iterdir() if p != made)[0]
    os.replace(made, other)
    with quiet() as stream, pytest.raises(DataError, match=rf"{other.name}: descriptor cache made with file_sha256"):
        train([str(data)], str(tmp_path / "d.pt"), config, stream=stream, plot=False)


def test_bad_training_files_are_named(sw_file, tmp_path):
    config = load_config(None, epochs=1, cache_dir=str(tmp_path / "cache"))
    no_forces = tmp_path / "no_forces.extxyz"
    frames = read(sw_file, ":3")
    for f in frames:
        f.calc = SinglePointCalculator(f, energy=f.get_potential_energy())
    write(no_forces, frames, format="extxyz")
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("3\nnot a header\nSi 0 0\n")
    cases = [(no_forces, r"no_forces\.extxyz, frame 0: no forces under the key 'forces'"),
             (empty, r"empty\.extxyz: the file is empty"),
             (garbage, r"garbage\.extxyz: not a readable extxyz file"),
             (tmp_path / "absent.extxyz", r"absent\.extxyz: file not found")]
    for path, message in cases:
        with quiet() as stream, pytest.raises(DataError, match=message):
            train([str(path)], str(tmp_path / "m.pt"), config, stream=stream)
    with pytest.raises(TrainConfigError, match=r"'force_weight' must be a number >= 0"):
        load_config(None, force_weight=-1.0)
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("epochs: 3\nlearnig_rate: 0.1\n")
    with pytest.raises(TrainConfigError, match=r"train\.yaml: unknown key 'learnig_rate'"):
        load_config(yaml_file)


def _gmetad(*args, cwd):
    return subprocess.run([sys.executable, "-m", "biasserver.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=_env())


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_cli_train_killed_and_resumed_then_test(sw_file, tmp_path):
    (tmp_path / "train.yaml").write_text("epochs: 6\nseed: 5\nthreads: 1\ncommittee: 2\n")
    common = ["train", sw_file, "--config", tmp_path / "train.yaml", "--no-plot"]
    done = _gmetad(*common, "-o", tmp_path / "whole.pt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch    6/6" in done.stderr and "wrote" in done.stderr
    # the same command, killed (SIGKILL) once the second epoch's checkpoint exists, then run again
    proc = subprocess.Popen([sys.executable, "-m", "biasserver.cli", *map(str, common), "-o", tmp_path / "killed.pt"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "killed.log.csv"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "killed.pt.ckpt").exists() and not (tmp_path / "killed.pt").exists()
    resumed = _gmetad(*common, "-o", tmp_path / "killed.pt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    _same_models(NNPModel.load(tmp_path / "whole.pt"), NNPModel.load(tmp_path / "killed.pt"))

    tested = _gmetad("test", tmp_path / "whole.pt", sw_file, "-o", tmp_path / "report", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["frames"] == N_FRAMES and summary["committee"] == 2
    assert set(summary["forces_per_element"]) == {"Si"}
    assert summary["uncertainty"]["forces"]["bins"]["count"][0] > 0
    assert (tmp_path / "report.parity.png").stat().st_size > 0
    assert (tmp_path / "report.uncertainty.png").stat().st_size > 0
    assert "energy  RMSE" in tested.stdout and "committee std vs error" in tested.stdout

    # errors name the file and exit 1
    (tmp_path / "empty.extxyz").write_text("")
    failed = _gmetad("train", tmp_path / "empty.extxyz", "-o", tmp_path / "x.pt", cwd=tmp_path)
    assert failed.returncode == 1 and "empty.extxyz: the file is empty" in failed.stderr
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.calc = SinglePointCalculator(cu, energy=-1.0, forces=np.zeros((len(cu), 3)))
    write(tmp_path / "cu.extxyz", cu, format="extxyz")
    failed = _gmetad("test", tmp_path / "whole.pt", tmp_path / "cu.extxyz", cwd=tmp_path)
    assert failed.returncode == 1
    assert "cu.extxyz, frame 0" in failed.stderr and "atom 0 is Cu" in failed.stderr
