"""MD steps and path-integral beads, counted as i-PI counts them.

With ``<initialize nbeads='P'>`` i-PI asks its force field for every bead of the
ring polymer once per MD step: P force requests per step, in an order that may
change from step to step (a client is preferably given the bead it had last).
The server asks i-PI for an INIT before every request (until the run is known to
have one bead, P = 1, after step 0 or on a restart): its index is the request's
id, i-PI's serial number of the (force component, bead) pair, consecutive over
the beads of one force component (offset by the components created before it,
e.g. 1 for a server behind a second ``<force>``). The bead index is that id less
the id of the first request served (i-PI hands a newly connected client the
first queued request, bead 0). A new MD
step begins when an id comes back that the current step has already had. P is learned at the end of step 0 (which deposits nothing) or, on a
restart, read from i-PI's checkpoint (``<beads nbeads=...>``) or from the beads
of the last frames recorded.

Each frame records its ``step`` (i-PI's MD step) and ``bead``. Deposition is per
MD step: at every ``stride``-th step each bead deposits, as a walker of the
shared bias would, one hill per biased atom at its own G_i. The hills of a step
are applied once all its beads have been evaluated (all of them felt the hills of
the earlier steps only), in bead order, so the result does not depend on the
order in which i-PI asked for the beads. With P beads a deposition thus adds P
hills per biased atom: the bias fills P times faster per MD step than with one
bead, as it would with P walkers; divide ``bias.height`` by P to keep the
classical rate.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET


class BeadError(RuntimeError):
    """i-PI's requests do not form whole MD steps; the message says what came."""


def nbeads_of(ipi_file: str | os.PathLike) -> int:
    """The number of beads of an i-PI input or checkpoint (1 when it says none)."""
    root = ET.parse(os.fspath(ipi_file)).getroot()
    for path in ("system/beads", "system/initialize"):
        node = root.find(path)
        if node is not None and node.get("nbeads"):
            return int(node.get("nbeads"))
    return 1


def nbeads_of_frames(frames) -> int | None:
    """The number of beads of a run from its last recorded frames (Atoms with
    ``step`` and ``bead`` in info, in file order): the beads of the last step that
    is complete (followed by a later step), or of the last step if no step follows
    it; None without frames. Frames without ``bead`` (older files) count as one bead."""
    if not frames:
        return None
    steps: dict[int, set[int]] = {}
    for atoms in frames:
        steps.setdefault(int(atoms.info.get("step", 0)), set()).add(int(atoms.info.get("bead", 0)))
    order = sorted(steps)
    complete = steps[order[-2]] if len(order) > 1 else steps[order[-1]]
    return max(complete) + 1


class StepCounter:
    """Which MD step and bead each force request belongs to (see the module docstring).

    step: the MD step of the next request; nbeads: beads per step, None to learn
    it from the first step.
    """

    def __init__(self, step: int, nbeads: int | None = None):
        self.step = int(step)
        self.nbeads = nbeads
        #: request ids of the current step seen so far, in request order
        self.seen: list[int] = []
        #: the request id of bead 0
        self.base: int | None = None

    def starts_new_step(self, request_id: int) -> bool:
        """Whether a request with this id begins the next MD step while the current
        one is still open (its beads all came, but P was not known yet)."""
        return request_id in self.seen

    def add(self, request_id: int) -> int:
        """Register a request in the current step; returns its bead index."""
        if self.base is None:
            self.base = request_id
        bead = request_id - self.base
        if bead < 0 or (self.nbeads is not None and bead >= self.nbeads):
            raise BeadError(f"i-PI sent request id {request_id} at step {self.step}: not one of the "
                            f"{self.nbeads} bead(s) of ids from {self.base} on (one force component "
                            "per server)")
        if request_id in self.seen:
            raise BeadError(f"i-PI asked for bead {bead} twice in step {self.step}")
        self.seen.append(request_id)
        return bead

    @property
    def complete(self) -> bool:
        """Whether every bead of the current step has been requested."""
        return self.nbeads is not None and len(self.seen) == self.nbeads

    def advance(self) -> None:
        """Close the current step (learning P from it if needed); the next request
        belongs to the next step."""
        if self.nbeads is None and self.seen:
            if sorted(self.seen) != list(range(self.base, self.base + len(self.seen))):
                raise BeadError(f"step {self.step} had request ids {sorted(self.seen)}: expected "
                                "consecutive ids, one per bead")
            self.nbeads = len(self.seen)
        self.seen = []
        self.step += 1
