"""The NNP as an i-PI client: `gmetad driver nnp --model` with a real i-PI, committee extras."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from biasserver.symmetry import SymmetryFunctions
from drivers.calculators import make_calculator
from ipi_helpers import read_properties, running_ipi, stop_process, unique_socket_name, wait_ipi, write_ipi_input
from test_drivers import ev_as_printed_by_ipi, evaluate_through_driver, ipi_round_trip_frame
from test_nnp_model import random_model, rattled

REPO = Path(__file__).resolve().parents[1]


def si64():
    atoms = bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=8)
    return atoms


def test_ipi_potential_equals_calculator_energy(tmp_path):
    atoms = si64()
    model = random_model(rattled(atoms, n=3), SymmetryFunctions.default(["Si"]), hidden=(30, 30), seed=5)
    model.save(tmp_path / "model.pt")
    steps = 3
    name = unique_socket_name("nnp")
    xml, frame = write_ipi_input(tmp_path, atoms, name, steps=steps, temperature_K=300.0)
    frame.write(tmp_path / "template.xyz")
    with running_ipi(xml, name, cwd=tmp_path, timeout=30) as proc:
        driver = subprocess.Popen(
            [sys.executable, "-m", "biasserver.cli", "driver", "nnp", "--model", "model.pt",
             "-s", "template.xyz", "-a", f"unix:{name}", "--connect-timeout", "20"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
        try:
            wait_ipi(proc, timeout=90)
            out, _ = driver.communicate(timeout=30)
        finally:
            stop_process(driver)
    assert driver.returncode == 0, out.decode(errors="replace")
    assert f"served {steps + 1} force evaluations".encode() in out
    props = read_properties(tmp_path / "sim.out")
    ref = ipi_round_trip_frame(frame)
    ref.calc = make_calculator("nnp", model=str(tmp_path / "model.pt"))
    e_ref = ref.get_potential_energy()
    # i-PI's frame is a rotation of atoms: same energy
    assert model.energy(frame) == pytest.approx(model.energy(atoms), rel=0, abs=1e-10 * abs(e_ref))
    assert props["potential"][0] == pytest.approx(ev_as_printed_by_ipi(e_ref), rel=1e-7, abs=1e-8)
    assert not np.allclose(props["potential"], props["potential"][0])   # the MD moved


def test_committee_spread_in_the_extras(tmp_path):
    atoms = si64()
    model = random_model(rattled(atoms, n=3), SymmetryFunctions.default(["Si"]), members=3, seed=6)
    model.save(tmp_path / "committee.pt")
    res = evaluate_through_driver(make_calculator("nnp", model=str(tmp_path / "committee.pt")), atoms, timeout=20)
    pred = model.predict(atoms)
    extras = json.loads(res.extras)
    assert extras["committee"] == 3
    assert extras["energy_std"] == pytest.approx(pred.energy_std, rel=1e-12) and pred.energy_std > 0
    np.testing.assert_allclose(extras["forces_std"], pred.forces_std, rtol=1e-12, atol=0)
    np.testing.assert_allclose(extras["energies_members"], pred.members, rtol=1e-12, atol=0)
    assert res.energy == pytest.approx(pred.energy, rel=1e-12)
    np.testing.assert_allclose(res.forces, pred.forces, rtol=0, atol=1e-12 * np.abs(pred.forces).max())
