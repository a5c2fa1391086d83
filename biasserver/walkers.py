"""Several walkers filling one bias over MPI: ``mpirun -n N gmetad serve walkers.yaml``.

Rank r of the MPI job is the bias server of walker r: its own i-PI, its own
force client (proxy mode), its own frames file. ``{walker}`` in the YAML's
addresses and paths (``server.ipi``, ``server.listen``, ``server.ipi_restart``,
``recorder.path``) becomes r; a frames path without it gets ``.walker-<r>``
before its extension, so that every walker writes its own file
(``gmetad select`` takes them all). Frames carry ``walker`` = r.

**The exchange: lockstep at every deposition step** (PLUMED's WALKERS_MPI
choice). Between depositions walkers run freely; at a deposition step s each
walker evaluates its bias (the hills of steps < s), gets its reference result and
computes its own hill candidates (centres G_i and metrics from its own
Jacobian: the expensive half of a deposition, done in parallel). Then one MPI
allgather gives every rank every walker's candidates, and every rank applies them
to its own copy of the shared bias in rank order (walker 0's hills, then walker
1's, ...; within a walker in bead order, then element order): heights
(well-tempered: from the bias each hill meets when it is applied, i.e. after the
earlier walkers' hills of the same step), merges and records are those of a
single walker depositing them one after another. Every rank runs the same code on
the same candidates in the same order, so every rank holds the same hills bit for
bit; rank 0 alone writes them to the hills file, which thus holds every hill once,
in the order in which it took effect, and a restart from it reproduces them bit
for bit (:meth:`GMetaDBias.apply_records` replays exactly what was applied). Each
rank keeps a CRC-32 of the hill records it has applied (seeded with the digest of
the hills it started from) and sends it with its next candidates: a rank whose
hills came to differ (another build, another CPU's linear algebra, another
configuration) ends the job with an error naming it at the next exchange. The
hills of step s act from step s + 1 on, on every walker.

One collective per deposition step: the allgather moves a fixed slot per rank (a
length, then the pickled candidates), the same size on every rank, grown to the
largest message seen when one does not fit (every rank sees the lengths, and the
allgather is repeated once with the larger slot: at the first deposition and when
the messages grow). Simple and deterministic, at a price: a slow walker holds the
others at each deposition step. Waiting walkers sleep (the allgather is
non-blocking: it is polled for 10 ms, yielding the core, then between sleeps of a
tenth of the time waited so far, at most 2 ms); beyond 10 ms they do not spin, so
on a shared node they leave the cores to the walkers still computing (a DFT walker's wait of
seconds costs the others 10 ms of CPU and a wake-up latency of at most 2 ms).

**Faults.** A walker whose force client dies waits for the next client as a
single server does; the others wait at the next deposition step and nothing is
lost. An exception in a rank ends the whole job with ``MPI_Abort`` (the message
names the rank); a rank killed outright is reported by ``mpirun`` ("process rank
r ... exited on signal 9"). A walkers job restarts from i-PI checkpoints taken
at one step S by every walker (``server.ipi_restart``; ``gmetad run --resume``
picks the newest step all walkers have): each rank sets aside its frames of
steps >= S, rank 0 the hill records of steps >= S, and the other ranks reload
the hills file. A server restarted alone while its i-PI runs on is refused for
walkers (their steps are tied together by the exchange). A walker whose i-PI
finishes keeps taking part in the exchanges (with no hills) until every walker
has finished.

**Runaway walkers.** ``bias.runaway_energy`` (eV) and ``bias.runaway_force``
(eV/A): a walker (or bead) whose bias energy, or largest bias force on one atom,
exceeds the limit at a deposition step deposits no hills at that step; the
server logs the walker, bead, step and value. The others' hills are unaffected.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bias import GMetaDBias, HillCandidates
from .hillsfile import HillRecord

log = logging.getLogger("gmetad.walkers")

#: environment variables that MPI launchers set in every rank (Open MPI's mpirun,
#: MPICH/Intel hydra and PMI-2 srun, PMIx launchers); without one of them the
#: server does not load MPI at all
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
#: longest sleep between two polls of a waiting walker, s
MAX_POLL_SECONDS = 2e-3
#: how long a waiting walker polls without sleeping first (yielding its core), s:
#: walkers that arrive within it pass without a sleep's latency (measured on a busy
#: 2-core node: 2 ms of polling made an exchange of 2 walkers twice as slow as a
#: blocking allgather, 10 ms as fast), at the price of up to 10 ms of CPU per exchange
SPIN_SECONDS = 1e-2
#: the allgather's first slot per rank, bytes (grown to the largest message seen)
INITIAL_SLOT_BYTES = 1 << 16
#: the placeholder for the walker index in addresses and paths
PLACEHOLDER = "{walker}"


def under_mpi_launcher() -> bool:
    """Whether this process was started by an MPI launcher (mpirun, mpiexec, srun)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class WalkerError(RuntimeError):
    """The walkers of one job disagree (steps, restart points); the message says how."""


class WalkerGroup:
    """The MPI communicator of a walkers job and the lockstep hill exchange.

    comm: an mpi4py communicator (COMM_WORLD); hills_path: the shared hills file
    (written by rank 0, read by the others when a restart sets records aside).
    """

    def __init__(self, comm, hills_path: str | None = None):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.hills_path = hills_path
        #: exchanges done and the wall time they took, s (the wait for the other
        #: walkers to reach the deposition step included: it is part of collective_seconds)
        self.exchanges = 0
        self.exchange_seconds = 0.0
        #: of exchange_seconds: in the allgather (waiting for the last walker, transfer), s
        self.collective_seconds = 0.0
        #: of collective_seconds: from this walker's arrival to the last walker's, by
        #: the ranks' clocks (time.time(): exact on one node, within the clocks'
        #: agreement across nodes), s
        self.wait_seconds = 0.0
        #: of exchange_seconds: adding every walker's hills to this rank's bias, s
        self.apply_seconds = 0.0
        #: CRC-32 of every hill record this rank has applied, in order (compared at
        #: each exchange: equal on every rank means bit-identical hill sets)
        self.checksum = 0
        # the allgather's slot per rank, bytes: the same on every rank, grown to the
        # largest message seen (see _allgather)
        self._slot = INITIAL_SLOT_BYTES
        self._send = np.empty(0, dtype=np.uint8)
        self._receive = np.empty(0, dtype=np.uint8)

    @classmethod
    def from_environment(cls) -> "WalkerGroup | None":
        """The group of this MPI job, or None when not started by an MPI launcher or
        started as a single process (then the server runs as without MPI)."""
        if not under_mpi_launcher():
            return None
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        if comm.Get_size() == 1:
            return None
        # ASE turns its file I/O into master-reads-and-broadcasts (and writes on rank 0
        # only) once mpi4py is loaded; every walker reads and writes its own files
        import ase.parallel
        ase.parallel.world.comm = ase.parallel.DummyMPI()
        return cls(comm)

    # -- collectives that sleep while waiting ---------------------------------
    @staticmethod
    def _wait(request) -> None:
        """Return when the non-blocking MPI ``request`` is complete: polled for up to
        SPIN_SECONDS while yielding the core (ranks that arrive together pass
        without the latency of a sleep), then with sleeps of a tenth of the time
        waited so far, at most MAX_POLL_SECONDS."""
        start = time.perf_counter()
        while not request.Test():
            if time.perf_counter() - start > SPIN_SECONDS:
                break
            os.sched_yield()
        else:
            return
        while not request.Test():
            # a tenth of the time waited so far: waking up late adds at most 10 % to a wait
            time.sleep(min(MAX_POLL_SECONDS, 0.1 * (time.perf_counter() - start)))

    def wait_for_all(self) -> None:
        """Return when every rank has called this (a barrier that sleeps while waiting)."""
        self._wait(self.comm.Ibarrier())

    def _allgather(self, message: bytes) -> list[bytes]:
        """Every rank's ``message``, in rank order: one non-blocking MPI allgather of
        a fixed slot per rank (8 bytes of length, then the message), polled as
        :meth:`_wait` does. The slot is the same on every rank; when a message does
        not fit, every rank sees it from the lengths, grows the slot to the largest
        and the allgather is repeated once (so a run pays that only when its
        messages grow, e.g. at its first deposition)."""
        from mpi4py import MPI
        while True:
            slot = self._slot
            if len(self._send) != slot:
                self._send = np.empty(slot, dtype=np.uint8)
                self._receive = np.empty(slot * self.size, dtype=np.uint8)
            fits = len(message) <= slot - 8
            self._send[:8] = np.frombuffer(np.int64(len(message)).tobytes(), dtype=np.uint8)
            if fits:
                self._send[8: 8 + len(message)] = np.frombuffer(message, dtype=np.uint8)
            self._wait(self.comm.Iallgather([self._send, MPI.BYTE], [self._receive, MPI.BYTE]))
            slots = self._receive.reshape(self.size, slot)
            lengths = slots[:, :8].copy().view(np.int64)[:, 0]
            largest = int(lengths.max())
            if largest <= slot - 8:
                return [message if r == self.rank else slots[r, 8: 8 + int(n)].tobytes()
                        for r, n in enumerate(lengths)]
            self._slot = max(2 * slot, 1 << int(largest + 8 - 1).bit_length())

    def allgather(self, value):
        """Every rank's ``value`` (any picklable object), in rank order (this rank's
        own is ``value`` itself, not a copy)."""
        messages = self._allgather(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return [value if r == self.rank else pickle.loads(m) for r, m in enumerate(messages)]

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (MPI_Abort; mpirun names this rank)."""
        self.comm.Abort(code)

    # -- the hill exchange -----------------------------------------------------
    def share(self, bias: GMetaDBias, step: int, candidates: Sequence[HillCandidates],
              done: bool = False) -> bool:
        """One lockstep exchange (see the module docstring): one allgather of every
        walker's hill candidates of MD step ``step``, which every rank then adds to
        its bias in rank order (rank 0 also writes them to the hills file). ``done``:
        this walker's i-PI has ended (it contributes nothing). Returns whether every
        walker has ended. A WalkerError, the same on every rank, when the walkers are
        at different deposition steps or their hill sets have come to differ."""
        start = time.perf_counter()
        if self.exchanges == 0:   # the hills every rank starts from are compared too
            self.checksum = zlib.crc32(hill_digest(bias).encode())
        arrival = time.time()
        gathered = self.allgather((step, list(candidates), done, self.checksum, arrival))
        gathered_at = time.perf_counter()
        self.collective_seconds += gathered_at - start
        self.wait_seconds += max(0.0, max(g[4] for g in gathered) - arrival)
        differing = [r for r, g in enumerate(gathered) if g[3] != gathered[0][3]]
        if differing:
            raise WalkerError(f"before step {step} the hills of walker{'s' if len(differing) > 1 else ''} "
                              f"{', '.join(map(str, differing))} differ from walker 0's (CRC-32 of the hill "
                              "records each has applied): the walkers made different hills of the same "
                              "candidates; run every walker with the same configuration and build on the "
                              "same kind of CPU")
        active = [(rank, s, groups) for rank, (s, groups, d, _, _) in enumerate(gathered) if not d]
        steps = sorted({s for _, s, _ in active})
        if len(steps) > 1:
            where = ", ".join(f"walker {rank} at step {s}" for rank, s, _ in active)
            raise WalkerError(f"walkers meet at different deposition steps ({where}): every walker "
                              "must run the same stride from the same step")
        if active:
            bias.step_count = steps[0]
            for _, _, groups in active:
                _, written = bias.apply_candidates(groups)
                self.checksum = records_checksum(written, self.checksum)
            bias.step_count = steps[0] + 1
        self.apply_seconds += time.perf_counter() - gathered_at
        self.exchanges += 1
        self.exchange_seconds += time.perf_counter() - start
        return not active

    def finish(self, bias: GMetaDBias | None) -> None:
        """After this walker's i-PI has ended: take part in the exchanges of the
        walkers still running, with no hills, until all have ended."""
        if bias is None:
            return
        while not self.share(bias, -1, [], done=True):
            pass

    def sync_after_restart(self, bias: GMetaDBias | None) -> None:
        """After rank 0 has set hill records aside (a restart): the other ranks
        reload the shared hills file, so every rank holds the same hills."""
        self.wait_for_all()
        if bias is not None and self.rank != 0 and self.hills_path and os.path.exists(self.hills_path):
            bias.load_hills(self.hills_path)


def records_checksum(records: Sequence[HillRecord], checksum: int = 0) -> int:
    """CRC-32 of hill records (id, step, element, height, centre and metric bits),
    continuing ``checksum``."""
    for r in records:
        checksum = zlib.crc32(f"{r.element} {r.id} {r.step} ".encode(), checksum)
        checksum = zlib.crc32(np.float64(r.height).tobytes(), checksum)
        checksum = zlib.crc32(np.ascontiguousarray(r.centre, dtype=np.float64), checksum)
        checksum = zlib.crc32(np.ascontiguousarray(r.metric, dtype=np.float64), checksum)
    return checksum


def hill_digest(bias: GMetaDBias) -> str:
    """SHA-256 (first 16 hex digits) of every hill's element, step, height, centre
    and metric bits: equal digests mean bit-identical hill sets."""
    digest = hashlib.sha256()
    for element, hills in bias.hills.items():
        digest.update(element.encode())
        for array in (hills.steps, hills.heights, hills.centres, hills.metrics):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class RunawayGuard:
    """Limits above which a walker's hills are held back (see the module docstring):
    energy in eV on the bias energy, force in eV/A on the largest bias force on an
    atom; None: no limit."""

    energy: float | None = None
    force: float | None = None

    @property
    def active(self) -> bool:
        return self.energy is not None or self.force is not None

    def reason(self, energy: float, forces: np.ndarray) -> str | None:
        """Why hills at this bias energy (eV) and these bias forces (N, 3) eV/A are
        held back, or None when they are not."""
        if self.energy is not None and energy > self.energy:
            return f"bias energy {energy:.6g} eV > runaway_energy {self.energy:g} eV"
        if self.force is not None and len(forces):
            largest = float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1)).max())
            if largest > self.force:
                return f"largest bias force {largest:.6g} eV/A > runaway_force {self.force:g} eV/A"
        return None


def for_walker(text: str | None, walker: int) -> str | None:
    """An address or path of the YAML with ``{walker}`` replaced by the index."""
    return None if text is None else text.replace(PLACEHOLDER, str(walker))


def frames_path(path: str | None, walker: int, walkers: int) -> str | None:
    """Walker ``walker``'s frames file: ``{walker}`` replaced, or with several walkers
    and no placeholder ``.walker-<r>`` inserted before the extension."""
    if path is None:
        return None
    if PLACEHOLDER in path or walkers == 1:
        return for_walker(path, walker)
    root, ext = os.path.splitext(path)
    return f"{root}.walker-{walker}{ext}"


def check_addresses(config, walkers: int) -> None:
    """Several walkers need an i-PI socket and a listening socket each: a clear
    error naming the key when an address lacks ``{walker}``."""
    from .config import ConfigError
    keys = [("server.ipi", config.server.ipi)]
    if config.server.mode == "proxy":
        keys.append(("server.listen", config.server.listen))
    if config.server.ipi_restart is not None:
        keys.append(("server.ipi_restart", config.server.ipi_restart))
    for key, value in keys:
        if walkers > 1 and PLACEHOLDER not in value:
            raise ConfigError(f"{config.path}: '{key}' is {value!r} for all {walkers} walkers: "
                              f"put {PLACEHOLDER} in it so that each walker has its own")
    if config.walkers is not None and config.walkers != walkers:
        raise ConfigError(f"{config.path}: 'walkers' is {config.walkers}, but the MPI job has {walkers} "
                          f"ranks: start it with mpirun -n {config.walkers}")


def shared_bias(config, group: WalkerGroup, enabled: bool) -> GMetaDBias:
    """The bias of one rank: rank 0 builds it as a single server does (loads the
    hills file, keeps an old one aside when not restarting, records new hills);
    then the other ranks load what rank 0 left, without writing."""
    group.hills_path = config.bias.hills_file if enabled else None
    bias = config.make_bias(enabled) if group.rank == 0 else None
    group.wait_for_all()
    if group.rank != 0:
        from .config import read_structure, system_of
        kwargs = config._bias_kwargs()
        if not enabled:
            kwargs["species"] = {}
        bias = GMetaDBias(config.symmetry_functions(), **kwargs)
        bias.system = system_of(read_structure(config.structure, config.path))
        path = group.hills_path
        if path and os.path.exists(path) and os.path.getsize(path) > 0:
            bias.load_hills(path)
    return bias
