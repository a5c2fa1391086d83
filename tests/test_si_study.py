"""The study pipeline: stage cache, committee members as calculators, and the Si
study at toy size end to end through the real path (i-PI + gmetad serve + the SW
driver), killed between stages and resumed, then a changed setting redoing only
the stages after it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from ase.build import bulk

from biasserver.symmetry import SymmetryFunctions
from nnp.calculator import NNPCalculator, member_calculators, member_model
from nnp.model import NNPModel, initial_layers, standard_scaling
from studies import pipeline, si
from studies.pipeline import Pipeline, StageError


# ------------------------------------------------------------------ stage cache


def _chain(workdir, settings_b, calls, fail_b=False):
    """Stages a -> b -> c; ``calls`` records (stage, resume) of every stage computed."""
    p = Pipeline(str(workdir), stream=open(os.devnull, "w"))

    def make(name, fail=False):
        def fn(folder, resume):
            calls.append((name, resume))
            with open(os.path.join(folder, "out.txt"), "a") as handle:
                handle.write(name)
            if fail:
                raise RuntimeError("killed")
            return {"value": name, "folder": folder}
        return fn

    p.stage("a", {"x": 1}, make("a"))
    p.stage("b", settings_b, make("b", fail_b), depends=["a"])
    p.stage("c", {"z": 3}, make("c"), depends=["b"])
    return p


def test_stage_cache_skips_resumes_and_invalidates(tmp_path):
    calls = []
    _chain(tmp_path, {"y": 2}, calls)
    assert calls == [("a", False), ("b", False), ("c", False)]
    calls.clear()
    p = _chain(tmp_path, {"y": 2}, calls)            # everything cached
    assert calls == [] and p.ran == []
    assert json.load(open(tmp_path / "stages" / "c.json"))["outputs"]["value"] == "c"
    calls.clear()
    _chain(tmp_path, {"y": 5}, calls)                # b's settings changed: b and c redone, a kept
    assert calls == [("b", False), ("c", False)]
    assert open(tmp_path / "b" / "out.txt").read() == "b"   # the old key's folder was cleared
    calls.clear()
    with pytest.raises(StageError, match="stage b failed: RuntimeError: killed"):
        _chain(tmp_path, {"y": 7}, calls, fail_b=True)
    assert calls == [("b", False)] and not (tmp_path / "stages" / "b.json").exists()
    calls.clear()
    _chain(tmp_path, {"y": 7}, calls)                # same key again: b resumes in its folder
    assert calls == [("b", True), ("c", False)]
    assert open(tmp_path / "b" / "out.txt").read() == "bb"


def test_stage_depending_on_a_stage_not_run_is_refused(tmp_path):
    p = Pipeline(str(tmp_path), stream=open(os.devnull, "w"))
    with pytest.raises(StageError, match="depends on a"):
        p.stage("b", {}, lambda folder, resume: {}, depends=["a"])


def test_relative_paths_of_stage_outputs(tmp_path):
    """Paths inside the work folder become relative (a moved folder still resolves
    them); other paths, relative paths and non-strings stay as they are."""
    p = Pipeline(str(tmp_path), stream=open(os.devnull, "w"))
    outputs = {"frames": str(tmp_path / "stages" / "f.extxyz"), "outside": "/elsewhere/f.extxyz",
               "sibling": str(tmp_path) + "-other/f", "relative": "a/b", "n": 3}
    assert p.relative_paths(outputs) == {"frames": os.path.join("stages", "f.extxyz"),
                                         "outside": "/elsewhere/f.extxyz", "sibling": str(tmp_path) + "-other/f",
                                         "relative": "a/b", "n": 3}
    assert p.absolute(p.relative_paths(outputs)["frames"]) == outputs["frames"]


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="toy.yaml: unknown setting 'budgett'"):
        si.settings(True, {"budgett": 6}, where="toy.yaml")
    with pytest.raises(ValueError, match="divisible by 2 and by g_runs = 4"):
        si.settings(False, {"budget": 6, "g_runs": 4})
    with pytest.raises(ValueError, match="unknown property 'vacancies'"):
        si.settings(True, {"properties": ["vacancies"]})


def test_stability_criteria():
    steps = np.arange(100.0)
    log = {"temperature": np.full(100, 310.0), "volume": np.linspace(1000, 1200, 100),
           "potential": np.zeros(100), "step": steps}
    assert pipeline.stability(log, 300.0)["stable"]
    hot = dict(log, temperature=np.full(100, 900.0))
    assert not pipeline.stability(hot, 300.0)["temperature_held"]
    blown = dict(log, volume=np.linspace(1000, 2000, 100))
    out = pipeline.stability(blown, 300.0)
    assert not out["stable"] and not out["volume_bounded"] and out["volume_ratio_max"] == pytest.approx(2.0)


def test_fps_frames_is_the_rule_of_gmetad_select():
    from biasserver.select import environment_fps

    sf = SymmetryFunctions.default(["Si"])
    base = bulk("Si", "diamond", a=5.43, cubic=True) * (1, 1, 2)
    frames = []
    for k in range(24):
        a = base.copy()
        a.rattle(0.02 + 0.01 * (k % 7), seed=k)
        a.set_cell(a.cell * (1 + 0.01 * (k % 3)), scale_atoms=True)
        frames.append(a)
    frames.append(frames[5].copy())          # an exact repeat is never chosen twice
    assert pipeline.fps_frames(frames, sf, 12) == environment_fps(frames, sf, 12)
    assert pipeline.fps_frames(frames, sf, 12, first=3) == environment_fps(frames, sf, 12, first=3)
    everything = pipeline.fps_frames(frames, sf, 25)
    assert len(everything) == 24 and not {5, 24} <= set(everything)


def test_environment_gaps(tmp_path):
    from ase.io import write

    sf = SymmetryFunctions.default(["Si"])
    crystal = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    hot = crystal.copy()
    hot.rattle(0.1, seed=2)
    write(tmp_path / "a.extxyz", [crystal, hot])
    write(tmp_path / "b.extxyz", [hot])
    vacancy = crystal.copy()
    del vacancy[0]
    out = pipeline.environment_gaps({"a": str(tmp_path / "a.extxyz"), "b": str(tmp_path / "b.extxyz")},
                                    {"crystal": crystal, "vacancy": vacancy}, sf, radius=1.0)
    probes = out["probes"]
    assert probes["crystal"]["a"]["max"] == pytest.approx(0.0, abs=1e-5)    # in set a exactly
    assert probes["crystal"]["b"]["max"] > 0.1
    assert probes["vacancy"]["a"]["max"] > probes["crystal"]["a"]["max"]
    assert probes["vacancy"]["a"]["atoms"] == 63 and 0 <= probes["vacancy"]["a"]["far_fraction"] <= 1


# ------------------------------------------------------------------ committee members


def _committee(members=3):
    sf = SymmetryFunctions.default(["Si"])
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    mean, std = standard_scaling(sf.values(atoms)["Si"])
    rng = np.random.default_rng(0)
    nets = [{"Si": initial_layers(sf.size("Si"), (8,), rng)} for _ in range(members)]
    return NNPModel(sf, (8,), "tanh", {"Si": mean}, {"Si": std}, {"Si": -4.3}, nets), atoms


def test_member_calculators_are_the_committee_members():
    model, atoms = _committee()
    pred = model.predict(atoms)
    calcs = member_calculators(model)
    assert len(calcs) == 3
    energies = []
    for k, calc in enumerate(calcs):
        a = atoms.copy()
        a.calc = calc
        energies.append(a.get_potential_energy())
        assert calc.model.n_members == 1 and calc.model.name.endswith(f"[member {k}]")
    np.testing.assert_allclose(energies, pred.members, rtol=0, atol=1e-10)
    assert np.mean(energies) == pytest.approx(pred.energy, abs=1e-10)
    with pytest.raises(ValueError, match=r"member 3 requested, the committee has 3 \(0..2\)"):
        member_model(model, 3)


def test_summarise_members_leaves_failures_out():
    out = pipeline.summarise_members([
        {"values": {"a": 1.0, "b": 2.0}, "failures": {}},
        {"values": {"a": 3.0, "b": None}, "failures": {"b": "RuntimeError: not converged"}}])
    assert out["a"]["mean"] == pytest.approx(2.0) and out["a"]["std"] == pytest.approx(1.0)
    assert out["b"]["mean"] == pytest.approx(2.0) and out["b"]["n_ok"] == 1
    assert out["b"]["failures"] == ["RuntimeError: not converged"]


# ------------------------------------------------------------------ the Si study, toy size

TOY = {
    "budget": 60, "g_runs": 3, "scan_steps": 20,
    "scan_candidates": [{"height": 0.005, "width": 1.0, "stride": 5, "well_tempered": 3000.0}],
    "coverage_stride": 5, "pool": 20, "train_frames": 8, "test_frames": 4,
    "training": {"committee": 2, "epochs": 3, "seed": 0, "patience": 3},
    "properties": ["a0", "cohesive_energy", "surface_110"], "jobs": 2,
}


def _reproduce(workdir, settings_path, wait=True):
    argv = [sys.executable, "-m", "biasserver.cli", "reproduce", "si", "--quick", "--workdir", str(workdir),
            "--settings", str(settings_path)]
    log = open(str(workdir) + ".log", "a")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        assert proc.wait(timeout=600) == 0, open(str(workdir) + ".log").read()[-3000:]
    return proc


def _ran(log_text: str) -> list[str]:
    """Stages computed (not skipped) according to a progress log."""
    return [line.split("]")[1].split(":")[0].strip() for line in log_text.splitlines()
            if line.startswith("[") and ": done in " in line]


def test_si_study_toy_end_to_end_killed_resumed_and_invalidated(tmp_path):
    workdir = tmp_path / "study"
    settings_path = tmp_path / "toy.yaml"
    settings_path.write_text(yaml.safe_dump(TOY))
    log_path = str(workdir) + ".log"

    # 1. killed (the whole process group, as a crash would) once the H runs have finished
    proc = _reproduce(workdir, settings_path, wait=False)
    deadline = time.monotonic() + 300
    while not (workdir / "stages" / "sample_H.json").exists():
        assert proc.poll() is None, open(log_path).read()[-3000:]
        assert time.monotonic() < deadline, "sample_H did not finish in 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_first = {p.name: p.stat().st_mtime for p in (workdir / "stages").glob("*.json")
                  if not p.name.endswith(".started.json")}
    assert {"sample_L.json", "sample_H.json"} <= set(done_first)
    assert "report.json" not in done_first
    first = open(log_path).read()

    # 2. the same command resumes: finished stages are not redone
    _reproduce(workdir, settings_path)
    second = open(log_path).read()[len(first):]
    assert "sample_L: done earlier" in second and "sample_H: done earlier" in second
    assert "sample_L" not in _ran(second) and "sample_H" not in _ran(second)
    for name, mtime in done_first.items():
        assert (workdir / "stages" / name).stat().st_mtime == mtime
    assert {"select", "train", "cross", "properties", "report"} <= set(_ran(second))

    results = json.load(open(workdir / "report" / "si-results.json"))
    # equal budgets: every set holds budget + one step-0 frame per run, the same frames chosen
    frames = {name: v["frames_in_set"] for name, v in results["selection"].items()}
    assert frames == {"L": 61, "H": 62, "G": 63}
    assert {v["train_frames"] for v in results["selection"].values()} == {8}
    assert [r["candidate"] for r in results["scan"]["rows"]] == [1]
    assert results["scan"]["chosen"] == TOY["scan_candidates"][0]
    # G runs are NPT with hills; L and H are plain MD
    hills = results["runs"]["G"][0]["hills"]
    assert hills and os.path.getsize(workdir / hills) > 0
    assert all(r["hills"] is None for r in results["runs"]["L"] + results["runs"]["H"])
    truth = results["properties"]["truth"]
    assert truth["a0"]["mean"] == pytest.approx(5.431, abs=2e-3)
    assert truth["cohesive_energy"]["mean"] == pytest.approx(-4.3366, abs=1e-3)
    assert truth["surface_110"]["mean"] == pytest.approx(0.1040, abs=1e-3)
    for name in ("NNP-L", "NNP-H", "NNP-G"):
        assert len(results["properties"][name]["a0"]["members"]) == 2
        assert set(results["cross_table"][name]) == {"L", "H", "G"}
        assert results["cross_table"][name]["L"]["force_rmse"] > 0
    for fig in ("fig4", "coverage", "cross"):
        assert os.path.getsize(workdir / results["figures"][fig]) > 1000
    cov = results["coverage"]
    assert all(c["centres"] == sorted(c["centres"]) and c["centres"][-1] > 0 for c in cov.values())
    summary = open(workdir / "report" / "si-summary.md").read()
    assert "| surface_110 |" in summary and "| surface_111 |" in summary
    gaps = results["gaps"]["probes"]
    assert set(gaps) == {"bulk", "vacancy", "interstitial_T", "surface_100", "surface_111", "gb_sigma3_112",
                         "das_3x3"}
    # a bulk-terminated surface lies farther from the bulk MD of L than the crystal does
    assert gaps["surface_111"]["L"]["max"] > gaps["bulk"]["L"]["max"]

    # 3. another property list: only the property evaluation and the report are redone
    settings_path.write_text(yaml.safe_dump({**TOY, "properties": ["a0", "cohesive_energy"]}))
    before = open(log_path).read()
    _reproduce(workdir, settings_path)
    third = open(log_path).read()[len(before):]
    assert _ran(third) == ["properties", "gaps", "report"]
    assert "train: done earlier" in third
    results = json.load(open(workdir / "report" / "si-results.json"))
    assert list(results["properties"]["truth"]) == ["a0", "cohesive_energy"]
