"""The G-metaD bias server: one core, two modes.

Proxy mode (default): the server is one i-PI client. Force clients (DFT codes
started with ``--ipi``, MLP or ASE drivers) connect to the server's own socket as
they would to i-PI. For every step the server relays i-PI's positions to a force
client, evaluates the bias meanwhile, records the unbiased reference frame and
returns reference + bias to i-PI, with ``bias_energy``, ``reference_energy`` and
``n_hills`` in the JSON extras. A force client that dies, times out or sends a
malformed message is dropped with a log line saying what was wrong; the pending
positions go to the next client that connects, so no frame is lost or doubled.

Bias mode: the server is an i-PI client that returns the bias alone, for
``<ensemble><bias>`` or an extra ``<force>``; the force client talks to i-PI
directly. Nothing is recorded (the server never sees the reference).

Restarts. A restarted server continues at the step after its last recorded
frame; a step i-PI re-sends (its positions equal the last frame's) keeps its
number and is recorded once. Whatever step s the server then serves first, the
hills deposited at s or later are set aside (:meth:`GMetaDBias.set_aside_from`)
and deposited again, so the redone step's bias energy, forces and frame are
those of an uninterrupted run. Given ``restart_step`` (i-PI's ``<step>`` in the
checkpoint it restarts from), the server also sets aside the frames and hills of
that step and later (side files ``frames.after-<step>.extxyz`` and
``HILLS.after-<step>``, see :mod:`biasserver.setaside`) and continues there.

Steps and beads. The server counts MD steps as i-PI does (see
:mod:`biasserver.beads`): with P path-integral beads, P requests make one step;
every frame records its ``step`` and ``bead``; hills are deposited once per MD
step, by every bead. Several walkers share one bias over MPI (see
:mod:`biasserver.walkers`); each frame's ``walker`` is its rank (0 alone).

Data flow: positions from i-PI -> units (protocol) -> C kernels -> bias ->
forces -> units (protocol) -> i-PI.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
from ase import Atoms

from .beads import StepCounter
from .bias import GMetaDBias
from .protocol import (ClientRole, Connection, ForceResult, Listener, Positions, ProtocolError,
                       ServerRole, connect, listen)
from .recorder import FrameRecorder
from .walkers import RunawayGuard, WalkerGroup, hill_digest

log = logging.getLogger("gmetad.server")

#: Test hook (environment variable, read once when a BiasServer is made):
#: ``after-hill:STEP`` or ``after-frame:STEP`` ends the server with os._exit
#: (no cleanup, as SIGKILL) right after step STEP's hills are written, or right
#: after its frame is recorded and before i-PI has the forces. Tests use it to
#: crash the server deterministically inside a step; runs never set it.
CRASH_ENV = "GMETAD_TEST_CRASH_AT"
CRASH_POINTS = ("after-hill", "after-frame")
#: exit code of a crash by the test hook
CRASH_EXIT_CODE = 70


def _crash_point() -> tuple[str, int] | None:
    """The crash point the test hook asks for (see CRASH_ENV), or None."""
    value = os.environ.get(CRASH_ENV, "")
    if not value:
        return None
    point, _, step = value.partition(":")
    if point not in CRASH_POINTS or not step.strip().lstrip("-").isdigit():
        raise ValueError(f"{CRASH_ENV}={value!r}: expected one of {', '.join(CRASH_POINTS)} "
                         f"followed by ':STEP'")
    return point, int(step)


class ReferencePool:
    """The force clients connected to the proxy's listening socket.

    :meth:`evaluate` hands positions to the current client; if it fails in any
    way (closed, killed, timed out, malformed or non-finite reply, wrong atom
    count) that client is dropped and the same positions go to the next client,
    waiting for one to connect if need be.
    """

    def __init__(self, listener: Listener, natoms: int, compute_timeout: Optional[float] = None,
                 accept_timeout: Optional[float] = None):
        self.listener = listener
        self.natoms = natoms
        self.compute_timeout = compute_timeout
        self.accept_timeout = accept_timeout
        self.client: Optional[Connection] = None
        self.dropped = 0
        self._closing = threading.Event()

    def _connected_client(self) -> Connection:
        if self.client is None:
            log.info("waiting for a force client on %s", self.listener.address)
            self.client = self.listener.accept(timeout=self.accept_timeout, io_timeout=60.0)
            log.info("force client connected: %s", self.client.peer)
        return self.client

    def evaluate(self, positions: Positions, step: int, bead: int = 0, init_string: str = "") -> ForceResult:
        """Reference energy (eV), forces (eV/A) and virial (eV) at ``positions``."""
        while True:
            conn = self._connected_client()
            try:
                # POSDATA then GETFORCE with no STATUS poll in between, as i-PI does by
                # default: every force client handles it, and it saves a round trip
                role = ServerRole(conn, compute_timeout=self.compute_timeout, status_after_posdata=False)
                result = role.evaluate(positions, bead=bead, init_string=init_string)
                if result.natoms != self.natoms:
                    raise ProtocolError(f"FORCEREADY: {result.natoms} atoms, expected {self.natoms}",
                                        "FORCEREADY")
                return result
            except (ProtocolError, OSError) as err:
                self.dropped += 1
                log.warning("dropping force client %s at step %d: %s; the step's positions go to "
                            "the next client", conn.peer, step, err)
                conn.close()
                self.client = None

    def close(self) -> None:
        """Send EXIT to the connected client and stop listening."""
        if self.client is not None:
            ServerRole(self.client).send_exit()
            self.client.close()
            self.client = None
        self.listener.close()


class BiasServer:
    """Serve G-metaD to i-PI (see the module docstring).

    bias: the G-metaD bias, or None to relay and record without biasing (plain MD
    with the same machinery, for comparison runs); template: Atoms giving element
    symbols and pbc in i-PI's atom order; ipi_address: i-PI's socket;
    listen_address: the proxy's socket for force clients (None in bias mode);
    recorder: where reference frames go (proxy mode only); restart_step: i-PI's
    step when i-PI restarts from a checkpoint (None: continue after the last
    recorded frame), see the module docstring. nbeads: i-PI's beads per MD step
    (None: learned from step 0, or from the frames on a restart); walkers: the MPI
    group of a walkers job (None: a single walker); guard: limits above which a
    walker's hills are held back.
    """

    def __init__(self, bias: GMetaDBias | None, template: Atoms, ipi_address: str,
                 listen_address: str | None = None, recorder: FrameRecorder | None = None,
                 allow_remote: bool = False, compute_timeout: Optional[float] = None,
                 connect_timeout: float = 120.0, accept_timeout: Optional[float] = None,
                 restart_step: int | None = None, nbeads: int | None = None,
                 walkers: WalkerGroup | None = None, guard: RunawayGuard | None = None):
        self._crash_at = _crash_point()
        self.walkers = walkers
        self.walker = 0 if walkers is None else walkers.rank
        self.guard = guard if guard is not None and guard.active else None
        #: hill candidates of the current MD step, per bead (deposited when it closes)
        self._pending: dict[int, list] = {}
        self.bias = bias
        self.template = template
        self.natoms = len(template)
        self._work_atoms = template.copy()
        self.ipi_address = ipi_address
        self.recorder = recorder
        self.connect_timeout = connect_timeout
        self.mode = "bias" if listen_address is None else "proxy"
        if self.mode == "bias" and bias is None:
            raise ValueError("bias mode needs a bias")
        self.pool = None
        if listen_address is not None:
            self.pool = ReferencePool(listen(listen_address, allow_remote=allow_remote), self.natoms,
                                      compute_timeout, accept_timeout)
        self.step = bias.step_count if bias is not None else 0
        #: positions of the last recorded frame: i-PI may re-send that step
        self._skip_positions = None
        if walkers is not None:
            self._check_walkers_agree(restart_step)
        if restart_step is not None:
            self._restart_at(int(restart_step))
            if walkers is not None:
                walkers.sync_after_restart(bias)
        else:
            last_hill = None if bias is None else bias.last_deposition()
            self._skip_positions = self._last_recorded_positions()
            if last_hill is not None or self._skip_positions is not None:
                log.info("restart: %d hills loaded (last deposited at step %s), %d frames on disk; "
                         "continuing at step %d", 0 if bias is None else bias.n_hills,
                         "-" if last_hill is None else last_hill,
                         0 if recorder is None else recorder.n_frames_on_disk, self.step)
        if bias is not None:
            bias.step_count = self.step   # deposition times follow the recorded MD steps
        if nbeads is None and restart_step is None:
            nbeads = self._recorded_nbeads()
        self.steps = StepCounter(self.step, nbeads)
        #: the first step served: the hills of it and later steps are set aside then
        self._first_step = True

    @property
    def listen_address(self):
        return None if self.pool is None else self.pool.listener.address

    def _restart_at(self, step: int) -> None:
        """Continue at i-PI's restart step: frames and hills of ``step`` and later go
        to side files, the run goes on from there."""
        if step < 0:
            raise ValueError(f"restart step must be >= 0, got {step}")
        side_frames = None if self.recorder is None else self.recorder.set_aside(step)
        side_hills = None if self.bias is None or self.walker != 0 else self.bias.set_aside_from(step)
        self.step = step
        last = None
        if self.recorder is not None and self.recorder.n_frames_on_disk:
            last = int(self.recorder.last_frame().info.get("step", -1))
            if last != step - 1:
                log.warning("restart at i-PI's step %d, but the frames file ends at step %d: "
                            "steps %d..%d have no frame", step, last, last + 1, step - 1)
        log.info("restart at i-PI's step %d: %d hills and %d frames kept (frames through step %s); "
                 "set aside: %s", step, 0 if self.bias is None else self.bias.n_hills,
                 0 if self.recorder is None else self.recorder.n_frames_on_disk,
                 "-" if last is None else last,
                 ", ".join(p for p in (side_frames, side_hills) if p) or "nothing")

    def _check_walkers_agree(self, restart_step: int | None) -> None:
        """Every walker restarts from the same i-PI step, and a walkers job continues
        only from i-PI checkpoints (server.ipi_restart): a clear error otherwise."""
        on_disk = 0 if self.recorder is None else self.recorder.n_frames_on_disk
        states = self.walkers.allgather((restart_step, on_disk))
        if len({s for s, _ in states}) > 1:
            raise ValueError("the walkers restart from different i-PI steps ("
                             + ", ".join(f"walker {r}: {s}" for r, (s, _) in enumerate(states))
                             + "): restart every i-PI from checkpoints of one step")
        if restart_step is None and any(n for _, n in states):
            raise ValueError("frames of an earlier run are on disk ("
                             + ", ".join(f"walker {r}: {n}" for r, (_, n) in enumerate(states) if n)
                             + "): a walkers job continues from i-PI checkpoints of one step "
                             "(server.ipi_restart with {walker}, as gmetad run --resume does), or "
                             "set bias.restart: false to start afresh")

    def _recorded_nbeads(self) -> int | None:
        """Beads per step of the run whose frames are on disk (None without frames)."""
        if self.recorder is None or self.recorder.n_frames_on_disk == 0:
            return None
        from ase.io import read
        from .beads import nbeads_of_frames
        tail = read(self.recorder.path, index=slice(-256, None), format="extxyz")
        nbeads = nbeads_of_frames(tail)
        last = int(tail[-1].info.get("step", 0))
        done = sum(1 for atoms in tail if int(atoms.info.get("step", 0)) == last)
        if nbeads > 1 and done < nbeads:
            raise ValueError(f"{self.recorder.path}: step {last} has {done} of its {nbeads} beads' frames; "
                             "a path-integral run continues from an i-PI checkpoint (server.ipi_restart, "
                             "as gmetad run --resume does)")
        return nbeads

    def _last_recorded_positions(self) -> np.ndarray | None:
        """Positions of the last recorded frame, to avoid a duplicate after a restart.

        The recorded frames say which steps were completed: the next step is the
        one after the last frame (a step's hills are deposited only once its
        reference result is in, just before its frame is recorded)."""
        if self.recorder is None or self.recorder.n_frames_on_disk == 0:
            return None
        last = self.recorder.last_frame()
        self.step = int(last.info.get("step", self.step - 1)) + 1
        return last.positions

    def _atoms(self, positions: Positions) -> Atoms:
        """The template at this step's cell and positions (one Atoms object, reused:
        the bias keeps no reference to it between calls)."""
        atoms = self._work_atoms
        atoms.cell.array[:] = positions.cell
        atoms.positions[:] = positions.positions
        return atoms

    def _bias_terms(self, atoms: Atoms):
        """Bias energy, forces and virial at ``atoms`` (no deposition: see :meth:`_deposit`)."""
        if self.bias is None:
            return 0.0, np.zeros((self.natoms, 3)), np.zeros((3, 3))
        return self.bias.energy_forces(atoms)

    def _collect(self, atoms: Atoms, bead: int, bias_energy: float, bias_forces: np.ndarray) -> None:
        """At a deposition step: this bead's hill candidates, unless the runaway
        guard holds them back (logged)."""
        if self.bias is None or not self.bias.deposits_at(self.step):
            return
        if self.guard is not None:
            reason = self.guard.reason(bias_energy, bias_forces)
            if reason is not None:
                log.warning("walker %d bead %d step %d: hills held back: %s", self.walker, bead,
                            self.step, reason)
                self._pending[bead] = []
                return
        self._pending[bead] = self.bias.hill_candidates(atoms)

    def _deposit(self) -> None:
        """Deposit the current MD step's hills (every ``stride`` steps, not at step 0):
        every bead's candidates in bead order, shared with the other walkers."""
        if self.bias is None:
            return
        if self.bias.deposits_at(self.step):
            self.bias.step_count = self.step
            candidates = [group for bead in sorted(self._pending) for group in self._pending[bead]]
            if self.walkers is None:
                self.bias.apply_candidates(candidates)
            else:
                self.walkers.share(self.bias, self.step, candidates)
        self._pending = {}
        self.bias.step_count = self.step + 1

    def _begin_request(self, request_id: int) -> int:
        """Account a request (``request_id``: i-PI's INIT index): close the previous
        step first when this request begins a new one (see :mod:`biasserver.beads`);
        returns the request's bead index."""
        if self.steps.starts_new_step(request_id):
            self._deposit()
            self._advance()
        return self.steps.add(request_id)

    def _end_request(self) -> None:
        """After a request's frame: the step moves on once all its beads are done."""
        if self.steps.complete:
            self._advance()

    def _advance(self) -> None:
        self.steps.advance()
        self.step = self.steps.step

    def _redo_from_here(self) -> None:
        """On the first step served: hills deposited at this step or later (by a
        server that crashed after depositing them) are set aside, so that this
        step's bias is that of an uninterrupted run; they are deposited again."""
        self._first_step = False
        if self.bias is None:
            return
        side = self.bias.set_aside_from(self.step)
        if side is not None:
            log.info("step %d is redone: the hills deposited at step %d and later are set aside in %s "
                     "and deposited again", self.step, self.step, side)

    def _crash_if_asked(self, point: str) -> None:
        """The test hook CRASH_ENV."""
        if self._crash_at == (point, self.step):
            log.warning("%s=%s:%d: ending the server now (test hook)", CRASH_ENV, point, self.step)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

    def _extras(self, bias_energy: float, reference_energy: float | None = None, client_extras: str = "") -> str:
        extras = {"bias_energy": bias_energy, "n_hills": 0 if self.bias is None else self.bias.n_hills}
        if reference_energy is not None:
            extras["reference_energy"] = reference_energy
        if client_extras:
            try:
                parsed = json.loads(client_extras)
                extras.update(parsed if isinstance(parsed, dict) else {"client": parsed})
            except json.JSONDecodeError:
                extras["client"] = client_extras
        return json.dumps(extras)

    def serve(self) -> int:
        """Connect to i-PI and serve until it sends EXIT or closes; returns the force
        requests served (MD steps times beads)."""
        conn = connect(self.ipi_address, timeout=self.connect_timeout, io_timeout=None)
        log.info("connected to i-PI at %s (%s mode%s%s)", self.ipi_address, self.mode,
                 "" if self.bias is not None else ", bias off",
                 "" if self.walkers is None else f", walker {self.walker} of {self.walkers.size}, pid {os.getpid()}")
        # an INIT before every request: it carries the bead index (see biasserver.beads),
        # until the run is known to have one bead
        ipi = ClientRole(conn, natoms=self.natoms, reinit_each_step=self.steps.nbeads != 1)
        served = 0
        executor = ThreadPoolExecutor(max_workers=1) if self.pool is not None else None
        try:
            while True:
                positions = ipi.wait_positions(timeout=None)
                if positions is None:
                    log.info("i-PI ended the run after %d force requests (step %d)", served, self.step)
                    break
                result = self._proxy_step(positions, ipi, executor) if self.pool is not None \
                    else self._bias_step(positions, ipi.init_bead or 0)
                # one bead: its index never changes, no more INITs (one round trip less)
                ipi.reinit_each_step = self.steps.nbeads != 1
                if not ipi.send_forces(result):
                    break
                served += 1
            if self.steps.seen and self.steps.nbeads is None:
                self._deposit()   # a run of one step: close it as i-PI did
                self._advance()
            if self.walkers is not None:
                self.walkers.finish(self.bias)
            if self.bias is not None:
                log.info("walker %d: %d hills, digest %s%s", self.walker, self.bias.n_hills,
                         hill_digest(self.bias), "" if self.walkers is None else
                         f"; {self.walkers.exchanges} exchanges, {self.walkers.exchange_seconds:.3f} s "
                         f"exchanging ({self.walkers.collective_seconds:.3f} s of it in the allgather, "
                         f"of which {self.walkers.wait_seconds:.3f} s waiting for the last walker to arrive; "
                         f"{self.walkers.apply_seconds:.3f} s adding hills)")
        finally:
            conn.close()
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            self.close()
        return served

    def _bias_step(self, positions: Positions, request_id: int) -> ForceResult:
        bead = self._begin_request(request_id)
        atoms = self._atoms(positions)
        energy, forces, virial = self.bias.energy_forces(atoms)
        self._collect(atoms, bead, energy, forces)
        if self.steps.complete:
            self._deposit()
        self._end_request()
        return ForceResult(energy, forces, virial, extras=self._extras(energy))

    def _proxy_step(self, positions: Positions, ipi: ClientRole, executor) -> ForceResult:
        atoms = self._atoms(positions)
        request_id = ipi.init_bead or 0
        repeat = self._skip_positions is not None and np.allclose(self._skip_positions, positions.positions,
                                                                  rtol=0, atol=1e-6)
        self._skip_positions = None
        if repeat:   # i-PI re-sent the step whose frame was recorded before the restart
            self.step -= 1
            self.steps.step = self.step
            log.info("step %d repeats the last recorded frame (restart): not recorded twice", self.step)
        bead = self._begin_request(request_id)
        if self._first_step:
            self._redo_from_here()
        reference_args = (positions, self.step, bead, ipi.init_string or "")
        if self.bias is None or not (self.bias.walls or self.bias.acting()):
            # nothing to overlap with: no thread hand-off on the relay's critical path
            bias_energy, bias_forces, bias_virial = self._bias_terms(atoms)
            reference = self.pool.evaluate(*reference_args)
        else:
            pending = executor.submit(self.pool.evaluate, *reference_args)
            try:
                bias_energy, bias_forces, bias_virial = self._bias_terms(atoms)   # meanwhile
            finally:
                reference = pending.result()
        # hills only once the reference is in: a server killed while it waits for
        # the reference restarts without this step's hills and redoes it exactly
        self._collect(atoms, bead, bias_energy, bias_forces)
        if self.steps.complete:
            self._deposit()
        self._crash_if_asked("after-hill")
        if self.recorder is not None and not repeat:
            virial = reference.virial if np.any(reference.virial) else None
            self.recorder.record(positions.positions, positions.cell, reference.energy, reference.forces,
                                 virial, bias_energy=bias_energy, step=self.step, walker=self.walker,
                                 bead=bead, n_hills=0 if self.bias is None else self.bias.n_hills)
        self._crash_if_asked("after-frame")
        self._end_request()
        return ForceResult(reference.energy + bias_energy, reference.forces + bias_forces,
                           reference.virial + bias_virial,
                           extras=self._extras(bias_energy, reference.energy, reference.extras))

    def close(self) -> None:
        """Release sockets and files (EXIT to the force client)."""
        if self.pool is not None:
            self.pool.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.bias is not None:
            self.bias.close()
