"""The H on Pt(111) study: the truth's (EMT's) path on the study's slab against the
numbers it must give, the study's helpers, and the whole pipeline at toy size
through the real path (i-PI + gmetad serve + the EMT driver), killed between
stages and resumed."""
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
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from studies import pt111_h, pt111_h_paths as paths
from studies.adsorption_sites import classify

# ------------------------------------------------------------------ the truth's path (EMT)

#: EMT's climbing-image barrier fcc -> oct on this slab (eV; 4 images, fmax 0.05 eV/A), measured
#: here: 3.96 eV up, 0.51 eV back from the symmetric octahedral point under the fcc hollow (+3.45 eV)
FCC_OCT_BARRIER = 3.962
OCT = 3.450


@pytest.fixture(scope="module")
def ends():
    calc = EMT()
    out = {}
    for site in paths.ENDPOINTS:
        atoms, info = paths.relax_endpoint(calc, site, fmax=0.01, steps=400)
        out[site] = (atoms, info)
    return out


def test_relaxed_endpoints(ends):
    energy = {site: info["energy"] for site, (_, info) in ends.items()}
    for site, (atoms, info) in ends.items():
        assert info["converged"] and info["minimum"], (site, info)
        assert classify(atoms, len(atoms) - 1) == paths.EXPECTED_SITE[site]
    assert energy["hcp"] - energy["fcc"] == pytest.approx(0.0, abs=1e-3)      # -0.1 meV
    assert energy["top"] - energy["fcc"] == pytest.approx(0.046, abs=2e-3)    # held over the atom
    # the octahedral point: H under the top layer (0.31 A under the clean layer's height,
    # 1.23 A under its three neighbours, which it lifts), 3.45 eV up
    assert energy["oct"] - energy["fcc"] == pytest.approx(OCT, abs=0.01)
    assert ends["oct"][1]["h_above_local_plane"] == pytest.approx(-1.23, abs=0.03)
    surface = paths.clean_slab().positions[:, 2].max()
    assert ends["oct"][0].positions[-1, 2] == pytest.approx(surface - 0.31, abs=0.03)
    for site in ("fcc", "hcp"):
        assert ends[site][1]["h_above_local_plane"] == pytest.approx(1.83, abs=0.03)


def test_emt_pushes_a_pt_atom_out_when_the_symmetry_breaks():
    """Off the hollow's axis EMT's H under the top layer ends in its one subsurface minimum:
    a top-layer Pt atom popped out as an adatom, H in its place, 1.37 eV up. That is not
    the octahedral site and the endpoint check says so."""
    from ase.optimize import BFGS

    calc = EMT()
    atoms = paths.start_structure("oct")
    atoms.set_constraint(FixAtoms(indices=paths.fixed_indices(atoms, 1)))   # H free in the plane
    atoms.positions[-1, 0] += 0.15
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=400)
    fcc, _ = paths.relax_endpoint(calc, "fcc", fmax=0.01, steps=400)
    assert atoms.get_potential_energy() - fcc.get_potential_energy() == pytest.approx(1.371, abs=0.01)
    surface = paths.clean_slab().positions[:, 2].max()
    assert atoms.positions[:-1, 2].max() - surface == pytest.approx(1.97, abs=0.05)   # the adatom
    info = paths._describe(atoms)
    assert info["site"] == "subsurface" and abs(info["h_above_local_plane"]) < 0.1
    assert not paths.in_site("oct", info)


def test_top_is_not_a_minimum_of_emt():
    atoms = paths.start_structure("top")
    atoms.set_constraint(FixAtoms(indices=paths.fixed_indices(atoms, 1)))   # H free in the plane too
    atoms.positions[-1, :2] += (0.3, 0.2)                                    # off the symmetric point
    atoms.calc = EMT()
    from ase.optimize import BFGS
    BFGS(atoms, logfile=None).run(fmax=0.005, steps=400)
    assert classify(atoms, len(atoms) - 1) in ("fcc", "hcp")


def test_surface_segments_of_the_truth(ends):
    calc = EMT()
    fixed = paths.fixed_indices(ends["fcc"][0], 1)
    e0 = ends["fcc"][1]["energy"]
    images, run = paths.neb_segment(calc, ends["fcc"][0], ends["hcp"][0], 3, True, 0.02, 300, fixed)
    energies = np.array([im.info["path_energy"] for im in images]) - e0
    saddle = int(np.argmax(energies))
    assert run["converged"]
    assert energies.max() == pytest.approx(0.009, abs=1.5e-3)     # the bridge, 9 meV
    assert classify(images[saddle], len(images[saddle]) - 1) == "bridge"
    images, run = paths.neb_segment(calc, ends["hcp"][0], ends["top"][0], 3, False, 0.05, 300, fixed)
    energies = np.array([im.info["path_energy"] for im in images]) - e0
    assert run["converged"]
    assert np.all(np.diff(energies) > 0)                        # uphill all the way to top
    assert energies[-1] == pytest.approx(0.046, abs=2e-3)


def test_subsurface_segment_of_the_truth(ends):
    """fcc -> oct, climbing image: EMT's barrier into the subsurface and back."""
    calc = EMT()
    fixed = paths.fixed_indices(ends["fcc"][0], 1)
    e0 = ends["fcc"][1]["energy"]
    images, run = paths.neb_segment(calc, ends["fcc"][0], ends["oct"][0], 4, True, 0.05, 400, fixed)
    energies = np.array([im.info["path_energy"] for im in images]) - e0
    assert run["converged"]
    assert energies.max() == pytest.approx(FCC_OCT_BARRIER, abs=0.05)
    assert energies.max() - energies[-1] == pytest.approx(FCC_OCT_BARRIER - OCT, abs=0.05)


def test_energies_on_images_and_fallback(ends):
    calc = EMT()
    images = []
    for site in ("fcc", "hcp", "oct"):
        atoms = ends[site][0].copy()
        atoms.info.update(endpoint=site)
        images.append(atoms)
    e = paths.energies_on_images(calc, images)
    assert e[0] == 0.0
    assert e[1] == pytest.approx(ends["hcp"][1]["energy"] - ends["fcc"][1]["energy"], abs=1e-9)
    found = paths.endpoint_structures(images)
    assert list(found) == ["fcc", "hcp", "oct"]
    np.testing.assert_allclose(found["oct"].positions, ends["oct"][0].positions)


# ------------------------------------------------------------------ the study's helpers


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="toy.yaml: unknown setting 'budgett'"):
        pt111_h.settings(True, {"budgett": 6}, where="toy.yaml")
    with pytest.raises(ValueError, match="pool 500 is larger than the 301 frames"):
        pt111_h.settings(True, {"pool": 500})
    with pytest.raises(ValueError, match="fixed_layers_high must be 0, 1 or 2"):
        pt111_h.settings(False, {"fixed_layers_high": 3})
    full, quick = pt111_h.settings(), pt111_h.settings(True)
    assert full.training["committee"] >= 3 and quick.budget < full.budget


def test_run_specs_fix_the_bottom_layers_and_bias_h_only(tmp_path):
    from studies.pipeline import write_run_directory

    s = pt111_h.settings(True)
    low = pt111_h.spec(s, "emt", "L", 10, 600.0, 1, 1)
    high = pt111_h.spec(s, "emt", "H", 10, 1700.0, 2, 1)
    g = pt111_h.spec(s, "emt", "G", 10, 600.0, 1, 1, {"height": 0.02, "width": 0.5, "stride": 5})
    assert len(low.fixed) == 9 and len(high.fixed) == 18 and set(low.fixed) < set(high.fixed)
    z = low.structure.positions[:, 2]
    assert np.allclose(z[low.fixed], z[:36].min())
    assert low.bias is None and g.bias["species"] == {"H": 1.0, "Pt": 0.0}
    assert low.walls[0]["reference"] == g.walls[0]["reference"] and len(g.walls[0]["reference"]) == 9
    write_run_directory(high, str(tmp_path), pt111_h.SYMMETRY)
    xml = open(tmp_path / "input.xml").read()
    assert "<fixatoms> [ " + ", ".join(str(i) for i in high.fixed) + " ] </fixatoms>" in xml
    assert "fixed" in high.describe() and "fixed" not in pt111_h.spec(s, "emt", "x", 10, 600.0, 0, 1).describe()


def test_site_statistics_and_slab_report():
    stats = pt111_h.site_statistics(["fcc", "fcc", "bridge", "hcp"], [0.0, 0.1, 0.2, 0.3])
    assert stats["fractions"]["fcc"] == 0.5 and stats["fractions"]["subsurface"] == 0.0
    assert stats["first_visit_ps"] == {"fcc": 0.0, "hcp": 0.3, "bridge": 0.2, "top": None, "subsurface": None}
    assert stats["visited"] == ["fcc", "hcp", "bridge"]
    start = pt111_h.start_structure()
    lifted = start.copy()
    top = pt111_h._layers(start)[0]
    lifted.positions[top[0], 2] += 1.5                # an adatom: one more group of heights
    report = pt111_h.slab_report([start, start.copy(), lifted])
    assert report["layers"] == 4 and report["intact_fraction"] == pytest.approx(2 / 3)
    assert report["top_layer_max_height_spread"] == pytest.approx(1.5, abs=1e-9)


def test_compare_paths_errors_on_the_truth_images():
    truth = {"sites": {"fcc": {}, "oct": {}}, "barriers": {"fcc->oct": 4.0}, "images_energy": [0.0, 4.0, 3.6]}

    def member(oct_energy, on_images, failure=None):
        return {"sites": {"fcc": {"energy": 0.0, "minimum": True, "used_fallback": False},
                          "oct": {"energy": oct_energy, "minimum": oct_energy > 1, "used_fallback": oct_energy <= 1}},
                "barriers": {"fcc->oct": oct_energy + 0.4}, "on_truth_images": on_images, "failure": failure}

    out = pt111_h.compare_paths(truth, [member(3.5, [0.0, 3.9, 3.5]), member(0.5, [0.0, 1.0, 0.5])])
    assert out["sites"]["oct"]["mean"] == pytest.approx(2.0) and out["sites"]["oct"]["minimum"] == [True, False]
    np.testing.assert_allclose(out["error_on_truth_images"]["mean"], [0.0, -1.55, -1.6])
    assert out["max_abs_error_on_truth_images"]["members"] == pytest.approx([0.1, 3.1])
    assert out["max_abs_error_on_truth_images"]["committee_mean"] == pytest.approx(1.6)


# ------------------------------------------------------------------ the study, toy size

TOY = {
    "budget": 60, "scan_steps": 30, "scan_candidates": [{"height": 0.02, "width": 0.5, "stride": 5}],
    "coverage_stride": 5, "pool": 40, "train_frames": 8, "test_frames": 4,
    "training": {"committee": 2, "epochs": 3, "seed": 0, "patience": 3},
    "neb_images": 1, "neb_fmax": 0.3, "neb_steps": 8, "relax_fmax": 0.2, "relax_steps": 15, "jobs": 2,
}


def _reproduce(workdir, settings_path, wait=True):
    argv = [sys.executable, "-m", "biasserver.cli", "reproduce", "pt111-h", "--quick", "--workdir", str(workdir),
            "--settings", str(settings_path)]
    log = open(str(workdir) + ".log", "a")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        assert proc.wait(timeout=900) == 0, open(str(workdir) + ".log").read()[-3000:]
    return proc


def _ran(log_text: str) -> list[str]:
    return [line.split("]")[1].split(":")[0].strip() for line in log_text.splitlines()
            if line.startswith("[") and ": done in " in line]


def test_pt111_h_study_toy_end_to_end_killed_and_resumed(tmp_path):
    workdir = tmp_path / "study"
    settings_path = tmp_path / "toy.yaml"
    settings_path.write_text(yaml.safe_dump(TOY))
    log_path = str(workdir) + ".log"

    proc = _reproduce(workdir, settings_path, wait=False)
    deadline = time.monotonic() + 400
    while not (workdir / "stages" / "sample_LH.json").exists():
        assert proc.poll() is None, open(log_path).read()[-3000:]
        assert time.monotonic() < deadline, "sample_LH did not finish in 400 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    marker = workdir / "stages" / "sample_LH.json"
    mtime = marker.stat().st_mtime
    first = open(log_path).read()

    _reproduce(workdir, settings_path)
    second = open(log_path).read()[len(first):]
    assert "sample_LH: done earlier" in second and "sample_LH" not in _ran(second)
    assert marker.stat().st_mtime == mtime
    assert {"scan", "sample_G", "sites", "select", "train", "cross", "paths", "report"} <= set(_ran(second))

    results = json.load(open(workdir / "report" / "pt111-h-results.json"))
    # equal budgets: 61 frames per set (step 0 included), the same number chosen from each
    assert {n: v["frames_in_set"] for n, v in results["selection"].items()} == {"L": 61, "H": 61, "G": 61}
    assert {v["train_frames"] for v in results["selection"].values()} == {8}
    assert results["scan"]["chosen"] == TOY["scan_candidates"][0]
    assert results["runs"]["G"]["hills"] and os.path.getsize(workdir / results["runs"]["G"]["hills"]) > 0
    assert results["runs"]["L"]["hills"] is None and results["runs"]["H"]["hills"] is None
    sites = results["sites"]["runs"]
    for name in ("L", "H", "G"):
        assert sum(sites[name]["fractions"].values()) == pytest.approx(1.0)
        assert sites[name]["first_visit_ps"]["fcc"] == 0.0          # every run starts in the fcc hollow
        assert sites[name]["slab"]["layers"] == 4
    assert sites["H"]["temperature"] == 1700.0 and sites["H"]["fixed_layers"] == 2
    assert set(results["sites"]["pca"]["markers"]) == set(paths.ENDPOINTS)
    truth = results["paths"]["truth"]
    assert truth["failure"] is None and truth["sites"]["fcc"]["energy"] == 0.0
    assert truth["sites"]["oct"]["site"] == "subsurface" and truth["sites"]["oct"]["energy"] > 1.0   # eV above fcc
    assert len(truth["images_energy"]) == 1 + 4 * (TOY["neb_images"] + 1)
    for name in ("NNP-L", "NNP-H", "NNP-G"):
        members = results["paths"]["members"][name]
        assert len(members) == 2
        assert all(len(m["on_truth_images"]) == len(truth["images_energy"]) for m in members)
        assert set(results["cross_table"][name]) == {"L", "H", "G"}
        c = results["paths"]["comparison"][name]
        assert c["max_abs_error_on_truth_images"]["committee_mean"] >= 0
    for fig in ("sites", "pca", "fig2"):
        assert os.path.getsize(workdir / results["figures"][fig]) > 1000
    fig2 = json.load(open(workdir / "report" / "pt111-h-fig2.json"))
    assert set(fig2) == {"truth", "NNP-L", "NNP-H", "NNP-G"}
    assert fig2["truth"]["barriers"]["fcc->hcp"] >= 0
    site_json = json.load(open(workdir / results["sites"]["json"]))
    assert set(site_json) == {"L", "H", "G"} and "first_visit_ps" in site_json["G"]
    summary = open(workdir / "report" / "pt111-h-summary.md").read()
    assert "| truth |" in summary and "| NNP-G |" in summary

    # the same command once more: nothing is redone
    before = open(log_path).read()
    _reproduce(workdir, settings_path)
    assert _ran(open(log_path).read()[len(before):]) == []
