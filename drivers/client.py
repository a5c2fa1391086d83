"""i-PI socket clients that serve forces from an ASE calculator.

:func:`run_driver` connects to i-PI (or anything that speaks its protocol, such
as the bias server) and answers every POSDATA with the energy, forces and virial
of an ASE calculator, until EXIT or the socket closes.

Command line::

    python -m drivers.client --calculator emt --structure init.xyz --address unix:gmetad
    python -m drivers.client --calculator eam --kwargs '{"potential": "Cu.eam.alloy"}' \\
        --structure init.xyz --address inet:localhost:31415
    python -m drivers.client --calculator nnp --model model.pt --structure init.xyz --address unix:gmetad

The structure file (anything ``ase.io.read`` reads) is the template: it gives
element symbols and periodic boundary conditions; positions and cell come from
each POSDATA.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Optional, Union

import numpy as np

from biasserver.protocol import (
    Address,
    AtomCountError,
    ClientRole,
    ForceResult,
    Positions,
    connect,
)

__all__ = ["AseEngine", "run_driver", "main"]

log = logging.getLogger(__name__)


class AseEngine:
    """Evaluate :class:`Positions` with an ASE calculator.

    Holds one copy of ``atoms_template`` (element symbols, pbc, masses, tags)
    with ``calculator`` attached; each call sets cell and positions (angstrom)
    and returns a :class:`ForceResult` in eV, eV/angstrom, with
    ``virial = -stress * volume`` (eV) when the calculator gives stress and the
    system is periodic in all three directions, zeros otherwise. A calculator
    with an ``ipi_extras()`` method (the NNP: committee spread) adds its dict to
    the JSON ``extras`` of every step.
    """

    def __init__(self, calculator: Any, atoms_template: Any, extras: str = "{}"):
        self.atoms = atoms_template.copy()
        self.atoms.calc = calculator
        self.extras = extras
        self.periodic = bool(np.all(self.atoms.pbc))
        implemented = getattr(calculator, "implemented_properties", None)
        self._stress = self.periodic and (implemented is None or "stress" in implemented)

    @property
    def natoms(self) -> int:
        """Number of atoms of the template."""
        return len(self.atoms)

    def __call__(self, pos: Positions) -> ForceResult:
        """Energy (eV), forces (eV/angstrom) and virial (eV) at ``pos`` (angstrom)."""
        from ase.calculators.calculator import PropertyNotImplementedError

        if pos.natoms != len(self.atoms):
            raise AtomCountError(
                f"POSDATA has {pos.natoms} atoms but the template structure has {len(self.atoms)}",
                "POSDATA",
            )
        atoms = self.atoms
        atoms.set_cell(pos.cell, scale_atoms=False)
        atoms.set_positions(pos.positions)
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        virial = np.zeros((3, 3))
        if self._stress:
            try:
                stress = atoms.get_stress(voigt=False)
            except (PropertyNotImplementedError, NotImplementedError):
                self._stress = False
            else:
                virial = -np.asarray(stress).reshape(3, 3) * atoms.get_volume()
        extras = self.extras
        per_step = getattr(atoms.calc, "ipi_extras", None)
        step_extras = per_step() if per_step is not None else None
        if step_extras:
            extras = json.dumps({**json.loads(self.extras or "{}"), **step_extras})
        return ForceResult(energy=energy, forces=forces, virial=virial, extras=extras)


def run_driver(
    calculator: Any,
    atoms_template: Any,
    address: Union[str, Address],
    connect_timeout: float = 60.0,
    io_timeout: Optional[float] = None,
    reinit_each_step: bool = False,
    max_steps: Optional[int] = None,
    extras: str = "{}",
) -> int:
    """Serve forces from ``calculator`` to the i-PI server at ``address``.

    ``atoms_template`` (ase.Atoms) gives symbols and pbc; each POSDATA's cell
    and positions (angstrom) are set on a copy of it. Energies go back in eV,
    forces in eV/angstrom, the virial (-stress * volume, eV; zeros for
    non-periodic systems or calculators without stress) and ``extras`` (a JSON
    string) as they are; units are converted at the wire.

    The driver answers STATUS with NEEDINIT until it gets INIT, then READY /
    HAVEDATA; with ``reinit_each_step`` it asks for INIT again after every step
    (as Quantum ESPRESSO does). ``connect_timeout``: seconds to keep retrying
    while the server is not up yet. ``io_timeout``: seconds to wait for any
    message (None = forever, since i-PI may be busy elsewhere). Stops on EXIT,
    when the server closes the socket, or after ``max_steps`` evaluations, and
    returns the number of force evaluations served.
    """
    engine = AseEngine(calculator, atoms_template, extras=extras)
    conn = connect(address, timeout=connect_timeout, io_timeout=io_timeout)
    try:
        role = ClientRole(conn, natoms=engine.natoms, reinit_each_step=reinit_each_step)
        served = role.serve(engine, max_steps=max_steps)
    finally:
        conn.close()
    log.info("driver served %d force evaluations at %s", served, address)
    return served


def main(argv: Optional[list] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from ase.io import read

    from .calculators import known_calculators, make_calculator

    ap = argparse.ArgumentParser(
        prog="python -m drivers.client",
        description="i-PI socket driver serving forces from an ASE calculator",
    )
    ap.add_argument("--calculator", "-c", required=True,
                    help=f"one of {', '.join(known_calculators())}, or package.module:ClassName")
    ap.add_argument("--kwargs", default="{}", help="JSON dict of calculator keyword arguments")
    ap.add_argument("--model", help="model file for the nnp calculator (same as --kwargs '{\"model\": ...}')")
    ap.add_argument("--structure", "-s", required=True,
                    help="template structure file (symbols, pbc), read with ase.io.read")
    ap.add_argument("--address", "-a", required=True,
                    help="unix:NAME (i-PI's /tmp/ipi_NAME), unix:/path, inet:HOST:PORT or HOST:PORT")
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    ap.add_argument("--io-timeout", type=float, default=None)
    ap.add_argument("--reinit-each-step", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None)
    args = ap.parse_args(argv)

    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        ap.error("--kwargs must be a JSON object")
    if args.model:
        kwargs["model"] = args.model
    calc = make_calculator(args.calculator, **kwargs)
    atoms = read(args.structure)
    n = run_driver(calc, atoms, args.address, connect_timeout=args.connect_timeout,
                   io_timeout=args.io_timeout, reinit_each_step=args.reinit_each_step,
                   max_steps=args.max_steps)
    print(f"served {n} force evaluations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
