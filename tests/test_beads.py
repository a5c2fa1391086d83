"""Path-integral beads through the server: MD steps counted as i-PI counts them.

Real i-PI 3.3 with ``nbeads=2`` on the Pt(111)-H slab of test_server.py (only H
biased, hills every 3 steps): 12 MD steps are 13 x 2 force requests, recorded as
frames of steps 0..12 with beads 0 and 1; each deposition step adds one hill per
bead, in bead order, after both beads were evaluated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

from biasserver import hillsfile
from biasserver.beads import BeadError, StepCounter, nbeads_of
from biasserver.bias import GMetaDBias
from biasserver.symmetry import SymmetryFunctions

from ipi_helpers import unique_socket_name
from test_server import (CUTOFF, HEIGHT, STEPS, STRIDE, Processes, finish, frames_of, ipi_input,
                         write_config)

NBEADS = 2


def pimd_input(workdir: Path, name: str, **kwargs):
    xml, frame = ipi_input(workdir, name, **kwargs)
    text = xml.read_text()
    assert "nbeads='1'" in text
    xml.write_text(text.replace("nbeads='1'", f"nbeads='{NBEADS}'"))
    return xml, frame


def run_pimd(workdir: Path, mode: str) -> Path:
    """proxy: i-PI <- server <- EMT driver; bias: EMT driver -> i-PI, server behind
    a second <force> (its request ids start after the driver's beads)."""
    name, ref = unique_socket_name("pi"), unique_socket_name("piref")
    procs = Processes(workdir)
    if mode == "proxy":
        xml, _ = pimd_input(workdir, name)
        write_config(workdir, name, ref)
        procs.sockets = (name, ref)
    else:
        bname = unique_socket_name("pibias")
        ffs = (f"  <ffsocket name='gmetad' mode='unix' pbc='false'>\n    <address> {bname} </address>\n"
               "    <latency> 1e-4 </latency>\n  </ffsocket>")
        xml, _ = pimd_input(workdir, name, extra_ffsockets=ffs,
                            extra_forces="<force forcefield='gmetad'> </force>")
        write_config(workdir, bname, ref)
        procs.sockets = (name, bname)
    try:
        ipi = procs.ipi(xml, name)
        if mode == "proxy":
            server = procs.serve()
            driver = procs.driver(f"unix:{ref}")
        else:
            server = procs.serve("server.log", "--mode", "bias")
            driver = procs.driver(f"unix:{name}")
        finish(procs, ipi, (server, driver))
    finally:
        procs.stop_all()
    return workdir


def test_pimd_steps_beads_and_deposition_per_md_step(tmp_path):
    run_pimd(tmp_path, "proxy")
    frames = frames_of(tmp_path)
    # steps as i-PI counts them, each with both beads, no gaps or duplicates
    assert len(frames) == NBEADS * (STEPS + 1)
    assert sorted((a.info["step"], a.info["bead"]) for a in frames) == \
        [(s, b) for s in range(STEPS + 1) for b in range(NBEADS)]
    assert [a.info["step"] for a in frames] == sorted(a.info["step"] for a in frames)
    assert all(a.info["walker"] == 0 for a in frames)
    # the beads are distinct replicas
    by_key = {(a.info["step"], a.info["bead"]): a for a in frames}
    assert np.abs(by_key[(1, 0)].positions - by_key[(1, 1)].positions).max() > 1e-6

    records = hillsfile.read(tmp_path / "HILLS").records
    depositions = list(range(STRIDE, STEPS + 1, STRIDE))
    # per MD step, one hill per bead, bead 0 first
    assert [r.step for r in records] == [s for s in depositions for _ in range(NBEADS)]
    sf = SymmetryFunctions.default(["Pt", "H"], CUTOFF)
    text = (tmp_path / "HILLS").read_text().splitlines()
    header = [ln for ln in text if ln.startswith("#!")]
    lines = [ln for ln in text if ln.strip() and not ln.startswith("#")]
    for (step, bead), atoms in by_key.items():
        ref = atoms.copy()
        ref.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        if step in depositions:
            hill = [r for r in records if r.step == step][bead]
            np.testing.assert_allclose(hill.centre, sf.values(atoms)["H"][0], rtol=0, atol=1e-6)
        # every bead of step s feels the hills of the steps before s only
        felt = len([r for r in records if r.step < step])
        if felt:
            partial = tmp_path / f"HILLS_{step}_{bead}"
            partial.write_text("\n".join(header + lines[:felt]) + "\n")
            assert atoms.info["bias_energy"] == pytest.approx(
                GMetaDBias.load(partial).energy_forces(atoms)[0], abs=1e-8)
        else:
            assert atoms.info["bias_energy"] == 0.0
    assert frames[-1].info["n_hills"] == NBEADS * len(depositions)
    assert records[0].height == HEIGHT


def test_pimd_in_bias_mode_behind_a_second_force(tmp_path):
    """The server's request ids are 2 and 3 there (after the driver's beads): still
    beads 0 and 1, the same hills at the same steps."""
    run_pimd(tmp_path, "bias")
    records = hillsfile.read(tmp_path / "HILLS").records
    depositions = list(range(STRIDE, STEPS + 1, STRIDE))
    assert [r.step for r in records] == [s for s in depositions for _ in range(NBEADS)]
    assert "bias mode" in (tmp_path / "server.log").read_text()


def test_step_counter_follows_beads_in_any_order():
    """i-PI hands a client the bead it had last first: 0 1 | 1 0 | 0 1 ..."""
    counter = StepCounter(0)
    seen = []
    for request in (0, 1, 1, 0, 0, 1, 1, 0):
        if counter.starts_new_step(request):
            counter.advance()
        seen.append((counter.step, counter.add(request)))
        if counter.complete:
            counter.advance()
    assert seen == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1), (3, 1), (3, 0)]
    assert counter.nbeads == 2
    # ids offset by earlier force components: bead = id - first id
    offset = StepCounter(0)
    assert [offset.add(2), offset.add(3)] == [0, 1]
    offset.advance()
    with pytest.raises(BeadError, match="request id 4"):
        offset.add(4)
    with pytest.raises(BeadError, match="twice"):
        counter.add(1), counter.add(1)


def test_nbeads_of_an_ipi_file(tmp_path):
    xml, _ = pimd_input(tmp_path, "unused")
    assert nbeads_of(xml) == NBEADS
    checkpoint = tmp_path / "RESTART"
    checkpoint.write_text("<simulation><system><beads natoms='2' nbeads='4'/></system></simulation>")
    assert nbeads_of(checkpoint) == 4
