"""GeTe study: both elements biased with their own coefficients, the
rock-salt-likeness criterion on rock salt, rhombohedral, antisite and disordered
structures, a sampling stage collecting a finished run, and the training-set
comparison's pieces (CHGNet test frames, order statistics, error table, ranking)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from biasserver.bias import GMetaDBias
from biasserver.symmetry import SymmetryFunctions
from studies.gete import rock_salt

REPO = str(__import__("pathlib").Path(__file__).resolve().parents[1])


def explicit_hill_sum(hills, values):
    """sum_s h_s exp(-1/2 (g - mu_s)^T A_s (g - mu_s)) for each row g, by plain numpy."""
    d = values[:, None, :] - hills.centres[None, :, :]
    q = np.einsum("nsi,sij,nsj->ns", d, hills.metrics, d)
    return (hills.heights[None, :] * np.exp(-0.5 * q)).sum(axis=1)


@pytest.fixture(scope="module")
def sf():
    return SymmetryFunctions.default(["Ge", "Te"])


def deposit_twice(sf, species, seed=2):
    atoms = rock_salt(1)
    bias = GMetaDBias(sf, height=0.001, width=1.0, stride=1, species=species, prune_tolerance=0.0)
    for k in range(3):                       # steps 0 (no deposition), 1 and 2
        frame = atoms.copy()
        frame.rattle(0.08, seed=seed + k)
        bias.step(frame)
    probe = atoms.copy()
    probe.rattle(0.08, seed=seed + 10)
    return bias, probe


def test_both_elements_deposit_hills_with_their_own_coefficients(sf):
    coefficients = {"Ge": 1.0, "Te": 0.25}
    bias, probe = deposit_twice(sf, coefficients)
    symbols = np.array(probe.get_chemical_symbols())
    # one hill per atom of each element and deposition, at the plain height h
    for e in ("Ge", "Te"):
        assert len(bias.hills[e]) == 2 * int((symbols == e).sum())
        np.testing.assert_array_equal(bias.hills[e].heights, 0.001)
    energies = bias.atom_energies(probe)
    values = sf.values(probe)
    for e, c in coefficients.items():
        own = explicit_hill_sum(bias.hills[e], values[e])
        assert own.min() > 1e-6                      # the probe feels its element's hills
        np.testing.assert_allclose(energies[symbols == e], c * own, rtol=1e-10, atol=1e-12 * own.max())
    total, forces, _ = bias.energy_forces(probe)
    assert total == pytest.approx(energies.sum(), rel=1e-12)
    # forces of the two-element bias: central differences of its energy
    for atom, axis in ((0, 0), (1, 2), (5, 1)):
        shifted = []
        for d in (1e-5, -1e-5):
            moved = probe.copy()
            moved.positions[atom, axis] += d
            shifted.append(bias.energy_forces(moved)[0])
        numerical = -(shifted[0] - shifted[1]) / 2e-5
        assert forces[atom, axis] == pytest.approx(numerical, abs=1e-6 * np.abs(forces).max())

    # the same depositions with Te's coefficient 1: Ge is unchanged, Te's bias x 4
    same, _ = deposit_twice(sf, {"Ge": 1.0, "Te": 1.0})
    scaled = same.atom_energies(probe)
    np.testing.assert_allclose(scaled[symbols == "Ge"], energies[symbols == "Ge"], rtol=1e-12)
    np.testing.assert_allclose(scaled[symbols == "Te"], 4 * energies[symbols == "Te"], rtol=1e-12)


def test_an_unbiased_element_deposits_nothing(sf):
    bias, probe = deposit_twice(sf, {"Ge": 1.0, "Te": 0.0})
    assert len(bias.hills["Te"]) == 0 and len(bias.hills["Ge"]) == 8
    energies = bias.atom_energies(probe)
    symbols = np.array(probe.get_chemical_symbols())
    np.testing.assert_array_equal(energies[symbols == "Te"], 0.0)
    assert energies[symbols == "Ge"].min() > 0


def test_hills_file_keeps_both_elements_and_coefficients(sf, tmp_path):
    bias, probe = deposit_twice(sf, {"Ge": 1.0, "Te": 0.25})
    bias.save(tmp_path / "HILLS")
    again = GMetaDBias.load(tmp_path / "HILLS")
    assert again.species == {"Ge": 1.0, "Te": 0.25}
    np.testing.assert_allclose(again.atom_energies(probe), bias.atom_energies(probe), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- #
# rock-salt-likeness
# --------------------------------------------------------------------------- #


def rhombohedral(u=0.3, strain=0.02):
    """alpha-GeTe-like: rock salt stretched along [111], Ge shifted by u (A) along
    [111], giving 3 short (2.86 A) and 3 long (3.21 A) Ge-Te bonds."""
    atoms = rock_salt(2)
    n = np.ones(3) / np.sqrt(3)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain * np.outer(n, n)), scale_atoms=True)
    ge = np.array(atoms.get_chemical_symbols()) == "Ge"
    atoms.positions[ge] += u * n
    return atoms


def disordered(seed=7, closest=2.4):
    """32 Ge + 32 Te at random in rock salt's cell, no two closer than ``closest`` A."""
    atoms = rock_salt(2)
    rng = np.random.default_rng(seed)
    placed = []
    while len(placed) < len(atoms):
        trial = rng.random(3) @ atoms.cell.array
        if placed:
            probe = atoms[:len(placed) + 1].copy()
            probe.positions[:len(placed)] = placed
            probe.positions[len(placed)] = trial
            if probe.get_distances(len(placed), range(len(placed)), mic=True).min() < closest:
                continue
        placed.append(trial)
    atoms.positions = np.array(placed)
    return atoms


def test_rock_salt_and_its_thermal_and_rhombohedral_distortions_are_rock_salt_like():
    from studies.gete_analysis import min_distance, non_rock_salt_fraction, rock_salt_like

    perfect = rock_salt(2)
    assert rock_salt_like(perfect).all()
    warm = perfect.copy()
    warm.rattle(0.15, seed=3)          # about the rms displacement at 600 K
    assert rock_salt_like(warm).all()
    rhombo = rhombohedral()
    bonds = np.sort(rhombo.get_distances(0, range(len(rhombo)), mic=True))[1:7]
    assert bonds[:3].max() < 2.9 and bonds[3:].min() > 3.15    # alpha-GeTe: 2.84 and 3.16 A
    assert rock_salt_like(rhombo).all()
    assert non_rock_salt_fraction(rhombo) == {"Ge": 0.0, "Te": 0.0}
    assert min_distance(perfect) == pytest.approx(6.012 / 2, abs=1e-9)


def test_antisites_and_disorder_are_not_rock_salt_like():
    from studies.gete_analysis import non_rock_salt_fraction, rock_salt_like

    atoms = rock_salt(2)
    symbols = atoms.get_chemical_symbols()
    far = atoms.get_distances(0, range(len(atoms)), mic=True) > 5.0
    ge, te = 0, int(np.flatnonzero(far & (np.array(symbols) == "Te"))[0])
    assert symbols[ge] == "Ge" and symbols[te] == "Te"
    assert atoms.get_distance(ge, te, mic=True) > 5.0       # the two antisites share no neighbour
    swapped = atoms.copy()
    swapped.symbols[ge], swapped.symbols[te] = "Te", "Ge"
    like = rock_salt_like(swapped)
    # the two antisites and their 2 x 6 neighbours, which now have a like-element bond
    assert (~like).sum() == 14
    assert not like[ge] and not like[te]
    fractions = non_rock_salt_fraction(disordered())
    assert fractions["Ge"] > 0.9 and fractions["Te"] > 0.9


# --------------------------------------------------------------------------- #
# the analysis on small run folders
# --------------------------------------------------------------------------- #


def write_run(folder, frames_energies, seed):
    """A run folder as studies.pipeline.sample leaves it (frames only): rock salt
    rattled more and more, with given reference energies (eV/atom above rock salt)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from studies.gete import E_ROCK_SALT

    variant = folder / "output" / "gmetad"
    variant.mkdir(parents=True)
    frames = []
    for step, e_rel in enumerate(frames_energies):
        atoms = rock_salt(1)
        atoms.rattle(0.02 + 0.03 * step, seed=seed + step)
        atoms.calc = SinglePointCalculator(atoms, energy=(E_ROCK_SALT + e_rel) * len(atoms),
                                           forces=np.zeros((len(atoms), 3)))
        atoms.info.update(step=step, bias_energy=0.01 * step)
        frames.append(atoms)
    write(variant / "frames.extxyz", frames, format="extxyz")
    return str(folder)


def test_analyse_writes_energies_order_coverage_and_figures(tmp_path):
    import json

    from studies.gete_analysis import analyse

    runs = {"gmetad-1": write_run(tmp_path / "g", [0.0, 0.05, 0.1, 0.2], seed=1),
            "plain": write_run(tmp_path / "p", [0.0, 0.03, 0.06, 0.07], seed=50)}
    data = analyse(runs, str(tmp_path / "out"), stride=1, settings={"note": "test"})
    on_disk = json.loads((tmp_path / "out" / "gete.json").read_text())
    assert on_disk["runs"].keys() == data["runs"].keys() == {"gmetad-1", "plain"}
    g = on_disk["runs"]["gmetad-1"]
    np.testing.assert_allclose(g["energy_rel"], [0.0, 0.05, 0.1, 0.2], atol=1e-9)
    np.testing.assert_allclose(g["bias"], [0.0, 0.01 / 8, 0.02 / 8, 0.03 / 8], rtol=1e-12)
    np.testing.assert_allclose(g["time_ps"], [0.0, 0.002, 0.004, 0.006], rtol=1e-12)
    assert g["non_rock_salt"]["Ge"][0] == 0.0                          # barely rattled rock salt
    counts = np.add(g["coverage"]["Ge"], g["coverage"]["Te"])
    assert np.all(np.diff(counts) >= 0) and counts[0] >= 2             # one centre per element at least
    assert [s["frame"] for s in g["snapshots"]] == [0, 1, 2, 3]
    assert on_disk["settings"] == {"note": "test"}
    for png in ("gete.png", "gete-snapshots.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="coverage reference run 'none'"):
        analyse(runs, str(tmp_path / "out2"), reference="none")


def test_msd_unwraps_periodic_jumps_and_removes_drift():
    from studies.gete_analysis import msd_series

    start = rock_salt(1)
    frames = [start.copy() for _ in range(3)]
    frames[1].positions += 0.3                       # a rigid drift: no displacement
    frames[2].positions[0, 0] += 0.5                 # one Ge moves by 0.5 A ...
    frames[2].positions[0, 0] += start.cell[0, 0]    # ... and is written a cell away
    msd = msd_series(frames)
    np.testing.assert_allclose(msd["Ge"][:2], 0.0, atol=1e-24)
    masses = start.get_masses()
    com = masses[0] * 0.5 / masses.sum()             # the centre of mass follows the move
    ge = np.array(start.get_chemical_symbols()) == "Ge"
    expected_ge = ((0.5 - com) ** 2 + (ge.sum() - 1) * com**2) / ge.sum()
    assert msd["Ge"][2] == pytest.approx(expected_ge, rel=1e-12)
    assert msd["Te"][2] == pytest.approx(com**2, rel=1e-12)


def test_reproduce_gete_refuses_the_si_options(capsys):
    from biasserver.cli import main

    assert main(["reproduce", "gete", "--jobs", "2", "--workdir", "unused"]) == 2
    assert "--truth, --settings and --jobs are for si" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# a sampling stage picks up a finished run placed in its folder
# --------------------------------------------------------------------------- #


def test_a_sampling_stage_adopts_a_finished_run_of_its_own_spec_and_clears_another(tmp_path, monkeypatch):
    """A run made outside the pipeline, copied into the stage folder, is collected
    (not rerun) when its inputs are the spec's; a run of another seed is cleared."""
    import shutil

    from ase.build import bulk

    from studies.pipeline import Pipeline, RunSpec, run_matches, sample

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    symmetry = {"default": {"elements": ["Si"], "cutoff": 4.0}}
    spec = RunSpec("toy", bulk("Si", "diamond", a=5.431, cubic=True), steps=4, temperature=300.0,
                   driver="gmetad driver sw --structure {structure} --address {address}", seed=5)
    outside = tmp_path / "outside"
    sample(spec, str(outside), symmetry, stream=open(os.devnull, "w"))
    frames = (outside / "output" / "gmetad" / "frames.extxyz").read_bytes()
    assert frames.count(b"Lattice=") == 5                     # steps 0-4
    other = RunSpec(**{**spec.__dict__, "seed": 6})
    assert run_matches(spec, str(outside), symmetry) and not run_matches(other, str(outside), symmetry)
    assert not run_matches(spec, str(tmp_path), symmetry)     # no run there at all

    work = tmp_path / "work"
    shutil.copytree(outside, work / "sample-toy")
    calls = []

    def run(folder, resume):
        calls.append(resume)
        return sample(spec, folder, symmetry, stream=open(os.devnull, "w")).to_dict()

    p = Pipeline(str(work), stream=open(os.devnull, "w"))
    out = p.stage("sample-toy", {"run": spec.describe()}, run, adopt=lambda f: run_matches(spec, f, symmetry))
    assert calls == [True]
    assert open(out["frames"], "rb").read() == frames         # collected, not rerun
    log = (work / "sample-toy" / "run.log").read_text()
    assert log.count("gmetad run in") == 1                   # the run outside, never started again

    # another spec's run in the folder is not adopted: the stage starts afresh there
    shutil.rmtree(work)
    shutil.copytree(outside, work / "sample-other")
    seen = []

    def fresh(folder, resume):
        seen.append((resume, sorted(os.listdir(folder))))
        return {}

    Pipeline(str(work), stream=open(os.devnull, "w")).stage(
        "sample-other", {"run": other.describe()}, fresh, adopt=lambda f: run_matches(other, f, symmetry))
    assert seen == [(False, [])]


# --------------------------------------------------------------------------- #
# test frames of the training-set comparison
# --------------------------------------------------------------------------- #


def test_rhombohedral_cell_has_the_peierls_distortion_and_ge_shift_measures_it():
    from studies.gete_nnp import N111, ge_shift, rhombohedral

    atoms = rhombohedral(2, u=0.3, strain=0.02)
    symbols = np.array(atoms.get_chemical_symbols())
    for ge in np.flatnonzero(symbols == "Ge")[:4]:
        d = atoms.get_distances(ge, range(len(atoms)), mic=True)
        nearest = np.argsort(d)[1:7]
        assert set(symbols[nearest]) == {"Te"}
        bonds = np.sort(d[nearest])
        assert bonds[:3].max() < 2.9 and bonds[3:].min() > 3.15     # 3 short + 3 long, alpha-GeTe-like
    back = atoms.copy()
    back.positions[symbols == "Ge"] -= 0.3 * N111                    # Ge back on the Te sublattice's centres
    back.positions[5] += atoms.cell[0]                               # written a cell away: unwrapped
    np.testing.assert_allclose(ge_shift([atoms, back], atoms, 0.3), [0.3, 0.0], atol=1e-12)


def test_order_statistics_tell_rock_salt_from_a_random_structure():
    from studies.gete_nnp import order_statistics, random_start

    crystal = order_statistics(rock_salt(2))
    assert crystal["coordination"] == {"Ge": 6.0, "Te": 6.0}
    assert crystal["like_bond_fraction"] == 0.0
    assert crystal["octahedral_angle_fraction"] == 1.0
    start = random_start(2, density_factor=0.92, closest=2.4, seed=3)
    assert start.get_volume() == pytest.approx(rock_salt(2).get_volume() / 0.92, rel=1e-12)
    d = start.get_all_distances(mic=True)
    assert d[np.triu_indices(len(start), 1)].min() >= 2.4
    random = order_statistics(start)
    assert random["like_bond_fraction"] > 0.2
    assert random["octahedral_angle_fraction"] < 0.7
    assert random["non_rock_salt"]["Ge"] > 0.9 and random["non_rock_salt"]["Te"] > 0.9


@pytest.fixture(scope="module")
def chgnet():
    from drivers.calculators import make_calculator
    return make_calculator("chgnet")


def test_melt_quench_frames_come_from_the_anneal_with_chgnet_results(chgnet):
    from studies.gete_nnp import melt_quench

    frames, record = melt_quench(chgnet, repeat=1, melt_steps=6, quench_steps=4, anneal_steps=6, every=3,
                                 closest=2.3, seed=5)
    assert len(frames) == 2 and [f.info["step"] for f in frames] == [13, 16]
    assert all(f.info["target_temperature"] == 300.0 for f in frames)
    np.testing.assert_allclose(record["log"]["target"][:7], [2000.0] * 6 + [1575.0])
    assert record["quench_rate_K_per_ps"] == pytest.approx(1700 / 0.008)
    probe = frames[-1].copy()
    probe.calc = chgnet
    assert frames[-1].get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(frames[-1].get_forces(), probe.get_forces(), atol=1e-4)
    assert record["final"]["octahedral_angle_fraction"] < 0.9            # not rock salt's 1
    assert record["final"]["non_rock_salt"]["Ge"] > 0.5


def test_rhombohedral_md_frames_start_distorted(chgnet):
    from studies.gete_nnp import rhombohedral_md

    frames, record = rhombohedral_md(chgnet, repeat=1, steps=6, every=2, temperature=300.0)
    assert [f.info["step"] for f in frames] == [2, 4, 6]
    assert len(record["ge_shift"]) == 3
    assert abs(record["ge_shift"][0] - 0.3) < 0.1          # 4 fs in: still the start's shift
    assert record["start"]["octahedral_angle_fraction"] == 1.0
    assert all(np.isfinite(f.get_forces()).all() for f in frames)


def test_compare_ranks_only_beyond_the_members_spread():
    from studies.gete_nnp import compare

    def row(e_mean, e_std, f_mean, f_std):
        return {"energy_rmse_member_mean": e_mean, "energy_rmse_member_std": e_std,
                "force_rmse_member_mean": f_mean, "force_rmse_member_std": f_std}

    table = {"A": {"s": row(0.010, 0.001, 0.20, 0.01)}, "B": {"s": row(0.020, 0.002, 0.21, 0.01)}}
    verdict = compare(table, "A", "B")["s"]
    assert verdict["energy"]["lower"] == "A" and verdict["force"]["lower"] == "within noise"
    assert verdict["energy"]["noise"] == pytest.approx(0.003)
    assert compare(table, "B", "A")["s"]["energy"]["lower"] == "A"


def test_across_runs_uses_the_spread_over_runs():
    from studies.gete_nnp import across_runs

    def row(e, f, std=0.0):
        return {"energy_rmse_member_mean": e, "energy_rmse_member_std": std,
                "force_rmse_member_mean": f, "force_rmse_member_std": std}

    table = {"MD": {"s": row(0.020, 0.30, 0.001)},
             "G1": {"s": row(0.010, 0.20)}, "G2": {"s": row(0.012, 0.40)}}
    v = across_runs(table, ["G1", "G2"], "MD")["s"]
    assert v["energy"]["mean"] == pytest.approx(0.011) and v["energy"]["std_over_runs"] == pytest.approx(0.001)
    assert v["energy"]["lower"] == "runs"                  # 9 meV apart, noise 2 meV
    assert v["force"]["lower"] == "within noise"           # runs 0.2 and 0.4: spread 0.1 > gap 0


def test_error_table_matches_nnp_evaluate_for_committee_and_members(tmp_path):
    """error_table computes each frame's functions once for all committees; its
    numbers are those of ``gmetad test`` (nnp.evaluate) on the same frames."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from nnp.calculator import member_model
    from nnp.config import load_config
    from nnp.evaluate import evaluate
    from nnp.train import train
    from studies.gete_nnp import error_table

    rng = np.random.default_rng(4)
    frames = []
    for k in range(8):
        atoms = rock_salt(1)
        atoms.rattle(0.1, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=-33.0 + 0.1 * rng.standard_normal(),
                                           forces=0.3 * rng.standard_normal((8, 3)))
        frames.append(atoms)
    write(tmp_path / "train.extxyz", frames[:6], format="extxyz")
    write(tmp_path / "test.extxyz", frames[6:], format="extxyz")
    models = {}
    for name, seed in (("A", 0), ("B", 5)):
        config = load_config(None, committee=2, epochs=2, seed=seed, symmetry={"default": {"cutoff": 4.0}})
        models[name] = str(tmp_path / f"{name}.pt")
        train([str(tmp_path / "train.extxyz")], models[name], config, stream=open(os.devnull, "w"), plot=False)
    sets = {"train": str(tmp_path / "train.extxyz"), "test": str(tmp_path / "test.extxyz")}
    table = error_table(models, sets)
    for name, path in models.items():
        for sname, frames_path in sets.items():
            row = table[name][sname]
            summary, _ = evaluate(path, [frames_path])
            assert row["frames"] == summary["frames"]
            assert row["energy_rmse"] == pytest.approx(summary["energy_per_atom"]["rmse"], rel=1e-9)
            assert row["force_rmse"] == pytest.approx(summary["forces"]["rmse"], rel=1e-9)
            assert row["energy_spread"] == pytest.approx(summary["uncertainty"]["energy_per_atom"]["mean_std"],
                                                         rel=1e-9)
            for k in range(2):
                member, _ = evaluate(member_model(path, k), [frames_path])
                assert row["energy_rmse_members"][k] == pytest.approx(member["energy_per_atom"]["rmse"], rel=1e-9)
                assert row["force_rmse_members"][k] == pytest.approx(member["forces"]["rmse"], rel=1e-9)
            assert row["force_rmse_member_std"] == pytest.approx(np.std(row["force_rmse_members"]), rel=1e-12)
            assert row["energy_mean_error"] ** 2 + row["energy_error_std"] ** 2 == pytest.approx(
                row["energy_rmse"] ** 2, rel=1e-9)
