"""CHGNet as a reference engine: `gmetad driver chgnet` through a real i-PI with the
network off, its stress and the virial it reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from ase.build import bulk

from biasserver.protocol import Positions
from drivers.calculators import make_calculator
from drivers.client import AseEngine
from ipi_helpers import read_properties, running_ipi, stop_process, unique_socket_name, wait_ipi, write_ipi_input
from test_drivers import ev_as_printed_by_ipi, ipi_round_trip_frame

REPO = Path(__file__).resolve().parents[1]

#: run before anything else in the driver's process: every socket that is not a unix
#: socket is refused, and name look-ups fail, so a download attempt raises
NETWORK_OFF = """
import socket, sys
_connect = socket.socket.connect
def _refuse(self, address, *args):
    if self.family != socket.AF_UNIX:
        raise ConnectionRefusedError(f"network is off in this test (connect to {address!r})")
    return _connect(self, address, *args)
def _no_lookup(*args, **kwargs):
    raise socket.gaierror(f"network is off in this test (look-up of {args[:1]!r})")
socket.socket.connect = _refuse
socket.socket.connect_ex = lambda self, address: _refuse(self, address) or 0
socket.getaddrinfo = _no_lookup
def _no_connection(address, *args, **kwargs):
    raise ConnectionRefusedError(f"network is off in this test (connect to {address!r})")
socket.create_connection = _no_connection
probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    probe.connect(("127.0.0.1", 9))
except ConnectionRefusedError as exc:
    if "network is off" not in str(exc):
        sys.exit(f"the network block failed: {exc}")
    print("network off", flush=True)
else:
    sys.exit("the network block failed")
finally:
    probe.close()
from biasserver.cli import main
sys.exit(main(sys.argv[1:]))
"""


def gete_cell(rattle=0.05, seed=4):
    """Conventional 8-atom rock-salt GeTe at CHGNet's lattice constant, rattled and sheared."""
    atoms = bulk("GeTe", "rocksalt", a=6.012, cubic=True)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.02], [0.0, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def chgnet():
    return make_calculator("chgnet")


def test_rock_salt_energy_is_chgnets_ground_state_value(chgnet):
    atoms = bulk("GeTe", "rocksalt", a=6.012, cubic=True) * (2, 2, 2)
    atoms.calc = chgnet
    # CHGNet 0.3.0: relaxed rock salt at a = 6.012 A, -4.14716 eV/atom, no stress left
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-4.14716, abs=2e-5)
    assert np.abs(atoms.get_stress()).max() < 1e-4          # eV/A^3 (16 MPa)
    assert np.abs(atoms.get_forces()).max() < 1e-4


def test_virial_is_minus_stress_times_volume_and_matches_the_energy(chgnet):
    atoms = gete_cell()
    engine = AseEngine(chgnet, atoms)
    res = engine(Positions(atoms.cell.array, atoms.positions))
    ref = atoms.copy()
    ref.calc = chgnet
    volume = ref.get_volume()
    stress = ref.get_stress(voigt=False)
    np.testing.assert_allclose(res.virial, -stress * volume, rtol=1e-6, atol=1e-7 * np.abs(stress).max() * volume)
    assert np.abs(res.virial).max() > 0.1                    # a strained cell: a real virial
    # the stress against central differences of the energy under strain (float32 energies:
    # a 2e-3 strain changes E by ~1e-2 eV, round-off ~1e-5 eV)
    eps, numerical = 2e-3, np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for d in (eps, -eps):
                strained = atoms.copy()
                strained.calc = chgnet
                x = np.eye(3)
                x[i, j] += d
                strained.set_cell(atoms.cell.array @ x, scale_atoms=True)
                energies.append(float(strained.get_potential_energy()))
            numerical[i, j] = (energies[0] - energies[1]) / (2 * eps) / volume
    np.testing.assert_allclose(stress, numerical, atol=0.02 * np.abs(stress).max())
    assert res.energy == pytest.approx(float(ref.get_potential_energy()), rel=1e-7)
    np.testing.assert_allclose(res.forces, ref.get_forces(), atol=1e-6 * np.abs(res.forces).max())


def test_ipi_with_chgnet_driver_network_off(tmp_path, chgnet):
    """`gmetad driver chgnet` with every inet connection refused: it loads the weights
    shipped in the wheel, and i-PI's potential and pressure are CHGNet's."""
    atoms = gete_cell()
    steps = 3
    name = unique_socket_name("chgnet")
    xml, frame = write_ipi_input(tmp_path, atoms, name, steps=steps, ensemble="nvt", temperature_K=600.0)
    frame.write(tmp_path / "template.xyz")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", no_proxy="*", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    with running_ipi(xml, name, cwd=tmp_path, timeout=30) as proc:
        driver = subprocess.Popen(
            [sys.executable, "-c", NETWORK_OFF, "driver", "chgnet", "-s", "template.xyz",
             "-a", f"unix:{name}", "--connect-timeout", "30"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            wait_ipi(proc, timeout=50)
            out, _ = driver.communicate(timeout=20)
        finally:
            stop_process(driver)
    text = out.decode(errors="replace")
    assert driver.returncode == 0, text
    assert text.startswith("network off"), text
    assert f"served {steps + 1} force evaluations" in text

    props = read_properties(tmp_path / "sim.out")
    ref = ipi_round_trip_frame(frame)
    ref.calc = chgnet
    e_ref = float(ref.get_potential_energy())
    assert props["potential"][0] == pytest.approx(ev_as_printed_by_ipi(e_ref), rel=1e-7)
    assert not np.allclose(props["potential"], props["potential"][0])    # the MD moved

    # the stress went through: i-PI's pressure_md = (2 K + tr W) / (3 V), W = -stress V
    from ipi.utils.units import unit_to_internal

    volume = ref.get_volume()
    trace_w = -np.trace(ref.get_stress(voigt=False)) * volume
    k_au = props["kinetic_md"][0] * unit_to_internal("energy", "electronvolt", 1.0)
    p_au = (2 * k_au + trace_w / ase_units.Hartree) / (3 * volume / ase_units.Bohr**3)
    assert props["pressure_md"][0] == pytest.approx(p_au / unit_to_internal("pressure", "gigapascal", 1.0),
                                                    rel=1e-5)
    assert abs(trace_w) > 0.1


def test_chgnet_bad_model_and_threads():
    with pytest.raises(ValueError, match="neither a shipped version"):
        make_calculator("chgnet", model="no-such-checkpoint.pth.tar")
    with pytest.raises(ValueError, match="threads must be"):
        make_calculator("chgnet", threads=0)
