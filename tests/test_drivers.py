"""Tests of drivers/: ASE calculators served over the i-PI protocol, with a real i-PI."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from biasserver import protocol as P
from biasserver.protocol import Positions, ServerRole
from drivers.calculators import known_calculators, make_calculator
from drivers.client import AseEngine, run_driver

from ipi_helpers import (
    read_properties,
    running_ipi,
    stop_process,
    unique_socket_name,
    wait_ipi,
    write_ipi_input,
)

REPO = Path(__file__).resolve().parents[1]


def cu_cell(strain=0.0, rattle=0.05, seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    cell = atoms.cell.array @ (np.eye(3) + np.array([[strain, 0.02, 0.0], [0.0, -strain, 0.01], [0.0, 0.0, 0.5 * strain]]))
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def si_cell(rattle=0.05, seed=3):
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def ipi_round_trip_frame(frame):
    """The structure exactly as the driver sees it after i-PI's own unit
    conversions: i-PI reads angstrom with its constant, we convert bohr back
    with ASE's."""
    from ipi.utils.units import unit_to_internal

    scale = unit_to_internal("length", "angstrom", 1.0) * ase_units.Bohr
    f = frame.copy()
    f.set_cell(frame.cell.array * scale, scale_atoms=True)
    return f


def ev_as_printed_by_ipi(e_ev):
    """An energy in eV, sent in hartree (ASE constant), printed by i-PI in its eV."""
    from ipi.utils.units import unit_to_internal

    return e_ev / ase_units.Hartree / unit_to_internal("energy", "electronvolt", 1.0)


def read_ipi_xyz_frames(path):
    lines = Path(path).read_text().splitlines()
    frames, i = [], 0
    while i < len(lines):
        n = int(lines[i])
        frames.append(np.array([[float(x) for x in ln.split()[1:4]] for ln in lines[i + 2:i + 2 + n]]))
        i += 2 + n
    return frames


# --------------------------------------------------------------------------- #
# real i-PI MD with the EMT driver
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "reinit_each_step,consolidate,ensemble",
    [(False, True, "nve"), (True, False, "nvt")],
    ids=["ready-consolidated-nve", "needinit-each-step-threaded-nvt"],
)
def test_ipi_md_with_emt_driver(tmp_path, reinit_each_step, consolidate, ensemble):
    steps = 8
    atoms = cu_cell(strain=-0.02)
    name = unique_socket_name("emt")
    xml, frame = write_ipi_input(tmp_path, atoms, name, steps=steps, ensemble=ensemble,
                                 consolidate_messages=consolidate, trajectory_stride=1)
    with running_ipi(xml, name, cwd=tmp_path, timeout=30) as proc:
        served = run_driver(EMT(), frame, f"unix:{name}", connect_timeout=20,
                            io_timeout=30, reinit_each_step=reinit_each_step)
        wait_ipi(proc, timeout=30)
    assert served == steps + 1  # step 0 plus one evaluation per step

    props = read_properties(tmp_path / "sim.out")
    np.testing.assert_array_equal(props["step"], np.arange(steps + 1))
    assert np.all(np.isfinite(props["potential"]))

    # step 0: the initial structure, as the driver received it
    ref = ipi_round_trip_frame(frame)
    ref.calc = EMT()
    e_ref = ref.get_potential_energy()
    e_ipi = props["potential"][0]
    assert e_ipi == pytest.approx(ev_as_printed_by_ipi(e_ref), rel=1e-7, abs=1e-8)
    assert e_ipi == pytest.approx(e_ref, rel=1e-6)  # i-PI's eV differs from ASE's by ~1e-7

    # forces at step 0 (xyz trajectory, 6 significant digits, eV/A)
    f_ipi = read_ipi_xyz_frames(tmp_path / "sim.for_0.xyz")[0]
    np.testing.assert_allclose(f_ipi, ref.get_forces(), rtol=2e-5, atol=1e-7)

    # virial sign end to end: i-PI's pressure_md = (2 K + tr W) / (3 V), W = -stress V,
    # evaluated in atomic units and printed with i-PI's GPa (3e-5 off ASE's GPa)
    from ipi.utils.units import unit_to_internal

    vol = ref.get_volume()
    w = -ref.get_stress(voigt=False) * vol
    k_au = props["kinetic_md"][0] * unit_to_internal("energy", "electronvolt", 1.0)
    p_au = (2 * k_au + np.trace(w) / ase_units.Hartree) / (3 * vol / ase_units.Bohr**3)
    p_ref = p_au / unit_to_internal("pressure", "gigapascal", 1.0)
    assert props["pressure_md"][0] == pytest.approx(p_ref, rel=1e-6)
    assert np.trace(w) > 0  # compressed cell: positive virial, as i-PI expects

    # the MD really moved and (NVE) conserved energy
    assert not np.allclose(props["potential"], props["potential"][0])
    if ensemble == "nve":
        assert np.ptp(props["conserved"]) < 1e-3 * len(atoms)


# --------------------------------------------------------------------------- #
# calculator factories
# --------------------------------------------------------------------------- #


def toy_eam_alloy(path: Path) -> Path:
    """A tiny single-element LAMMPS setfl (eam/alloy) file for Cu."""
    nrho, drho, nr, dr, rc = 500, 0.01, 500, 0.01, 4.99
    rho = np.arange(nrho) * drho
    r = np.arange(nr) * dr
    taper = np.where(r < rc, (rc - r) ** 2 / rc**2, 0.0)
    emb = -np.sqrt(rho)
    dens = np.exp(-1.5 * (r - 2.5)) * taper
    phi = 0.5 * (np.exp(-4.0 * (r - 2.55)) - 2 * np.exp(-2.0 * (r - 2.55))) * taper
    lines = ["toy EAM for tests", "not a physical potential", "", "1 Cu",
             f"{nrho} {drho} {nr} {dr} {rc}", "29 63.546 3.615 fcc"]
    lines += [f"{x:.16e}" for x in np.concatenate([emb, dens, r * phi])]
    path.write_text("\n".join(lines) + "\n")
    return path


def check_calculator(calc, atoms, check_fd=True):
    atoms = atoms.copy()
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matscipy's Tersoff warns about np.where
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        assert np.isfinite(e)
        assert f.shape == (len(atoms), 3) and np.all(np.isfinite(f))
        assert np.abs(f).max() > 1e-4  # rattled: forces are not trivially zero
        if check_fd:
            np.testing.assert_allclose(calculate_numerical_forces(atoms, eps=1e-5), f, atol=2e-4)
    return e


def test_factory_emt():
    check_calculator(make_calculator("emt"), cu_cell())


def test_factory_sw_original_si_parameters():
    calc = make_calculator("sw")
    check_calculator(calc, si_cell())
    perfect = bulk("Si", "diamond", a=5.431)
    perfect.calc = calc
    # SW with the 1985 parameters: cohesive energy 2 * epsilon = 4.3366 eV/atom
    assert perfect.get_potential_energy() / len(perfect) == pytest.approx(-2 * 2.1683, abs=2e-3)


def test_factory_tersoff_si():
    calc = make_calculator("tersoff")
    check_calculator(calc, si_cell())
    perfect = bulk("Si", "diamond", a=5.432)
    perfect.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert perfect.get_potential_energy() / len(perfect) == pytest.approx(-4.63, abs=0.01)


def test_factory_eam(tmp_path):
    pot = toy_eam_alloy(tmp_path / "Cu_toy.eam.alloy")
    check_calculator(make_calculator("eam", potential=str(pot)), cu_cell(strain=0.0))


def test_factory_module_class():
    calc = make_calculator("ase.calculators.lj:LennardJones", sigma=2.3, epsilon=0.2, rc=5.0)
    check_calculator(calc, cu_cell(), check_fd=False)
    from ase.calculators.lj import LennardJones

    assert isinstance(calc, LennardJones) and calc.parameters.sigma == 2.3


def test_factory_errors():
    with pytest.raises(ValueError) as ei:
        make_calculator("vasp-on-the-moon")
    for known in ("emt", "sw", "tersoff", "eam"):
        assert known in str(ei.value)
    assert set(known_calculators()) >= {"emt", "sw", "tersoff", "eam"}
    with pytest.raises(ValueError, match="cannot import module"):
        make_calculator("no_such_module_xyz:Calc")
    with pytest.raises(ValueError, match="has no attribute"):
        make_calculator("ase.calculators.emt:NoSuchClass")
    with pytest.raises(ValueError, match="unknown parameter set"):
        make_calculator("sw", parameters="Nope")


# --------------------------------------------------------------------------- #
# virial convention, through the real protocol
# --------------------------------------------------------------------------- #


def evaluate_through_driver(calc, atoms, timeout: float = 10):
    """One force evaluation of ``atoms`` by ``run_driver(calc)`` in a thread, through a real
    socket (inet on purpose: the TCP_NODELAY path); returns the server side's result."""
    lst = P.listen("inet:127.0.0.1:0")
    box = {}

    def target():
        try:
            box["served"] = run_driver(calc, atoms, f"inet:127.0.0.1:{lst.address.port}",
                                       connect_timeout=timeout, io_timeout=timeout)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        conn = lst.accept(timeout=timeout, io_timeout=timeout)
        role = ServerRole(conn, compute_timeout=timeout)
        res = role.evaluate(Positions(atoms.cell.array, atoms.positions))
        role.send_exit()
        thread.join(timeout)
    finally:
        lst.close()
    assert not thread.is_alive() and "error" not in box, box
    assert box["served"] == 1
    return res


@pytest.mark.parametrize("engine", ["emt", "sw"])
def test_virial_is_minus_stress_times_volume(engine):
    atoms = cu_cell(strain=0.03) if engine == "emt" else si_cell()
    if engine == "sw":
        atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0], [0, 0.99, 0.02], [0, 0, 1.0]]), scale_atoms=True)
    res = evaluate_through_driver(make_calculator(engine), atoms)

    ref = atoms.copy()
    ref.calc = make_calculator(engine)
    stress = ref.get_stress(voigt=False)
    np.testing.assert_allclose(res.virial, -stress * ref.get_volume(), rtol=1e-10, atol=1e-10)
    # independent of the calculator's own stress: finite differences of the energy
    num = calculate_numerical_stress(ref, eps=1e-6, voigt=False)
    np.testing.assert_allclose(res.virial, -num * ref.get_volume(), atol=2e-4)
    assert res.energy == pytest.approx(ref.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(res.forces, ref.get_forces(), rtol=1e-12, atol=1e-12)
    assert json.loads(res.extras) == {}


def test_virial_zero_without_3d_periodicity():
    atoms = cu_cell()
    atoms.pbc = (True, True, False)
    eng = AseEngine(EMT(), atoms)
    res = eng(Positions(atoms.cell.array, atoms.positions))
    np.testing.assert_array_equal(res.virial, 0.0)
    assert np.all(np.isfinite(res.forces))


def test_engine_rejects_wrong_atom_count():
    atoms = cu_cell()
    eng = AseEngine(EMT(), atoms)
    with pytest.raises(P.AtomCountError, match="template structure has 32"):
        eng(Positions(atoms.cell.array, atoms.positions[:5]))


def test_driver_command_line(tmp_path):
    atoms = si_cell()
    atoms.write(tmp_path / "si.xyz")  # extxyz: symbols, cell, pbc
    name = unique_socket_name("cli")
    lst = P.listen(f"unix:{name}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.client", "-c", "sw", "-s", str(tmp_path / "si.xyz"),
         "-a", f"unix:{name}", "--reinit-each-step"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        conn = lst.accept(timeout=30, io_timeout=20)
        role = ServerRole(conn, compute_timeout=20)
        ref = atoms.copy()
        ref.calc = make_calculator("sw")
        for k in range(2):
            ref.positions[0, 0] += 0.01 * k
            res = role.evaluate(Positions(ref.cell.array, ref.positions), init_string="x")
            assert role.last_status is P.ClientStatus.HAVEDATA
            assert res.energy == pytest.approx(ref.get_potential_energy(), rel=1e-12)
        assert role.status() is P.ClientStatus.NEEDINIT  # QE-style client
        role.send_exit()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert b"served 2 force evaluations" in out
    finally:
        lst.close()
        stop_process(proc)
