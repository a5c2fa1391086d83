"""i-PI's restart files: the step they restart from, and the newest one of a run.

i-PI (3.x) saves its whole state as XML, which ``i-pi FILE`` restarts from:

- ``RESTART`` in its working folder at the end of a run and on a soft exit
  (SIGINT, SIGTERM, an ``EXIT`` file, ``<total_time>``), holding the state at
  the last multiple of ``<simulation safe_stride>``;
- for each ``<checkpoint filename=NAME stride=N overwrite=...>`` of
  ``<output prefix=P>``, every N steps: ``P.NAME`` (overwrite true: one file,
  rewritten in place, so a kill while it is written leaves it truncated) or
  ``P.NAME_K`` for the K-th checkpoint (overwrite false). Only these survive a
  SIGKILL of i-PI.

``<step>S</step>`` counts the completed MD steps. Restarted from it, i-PI first
asks for the forces at the positions of step S (frame S of the frames file:
frame 0 is the initial structure) and writes its outputs from step S + 1 on.
An i-PI input without ``<step>`` starts at step 0.

Precision: i-PI writes every float of a checkpoint with ``<simulation
floatformat>``, by default ``%16.8e``: 9 significant digits, so a restarted
trajectory starts ~3e-8 A (and as far in momenta) off the uninterrupted one and
diverges from it. With ``%.16e`` (17 significant digits, which ``gmetad run``
sets) floats round-trip and the restart continues the trajectory to the last
bit of the unit conversions.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET

log = logging.getLogger("gmetad.checkpoint")

#: the soft-exit restart file i-PI writes in its working folder
RESTART = "RESTART"


class CheckpointError(ValueError):
    """An i-PI restart file cannot be used; the message names the file."""


def restart_step(path: str | os.PathLike) -> int:
    """The MD step i-PI restarts from with the file ``path`` (0 for an input
    without ``<step>``); a CheckpointError naming the file when it is not one."""
    path = os.fspath(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise CheckpointError(f"{path}: not a complete i-PI XML file ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from None
    if root.tag != "simulation":
        raise CheckpointError(f"{path}: not an i-PI input or checkpoint (top element <{root.tag}>, "
                              "expected <simulation>)")
    node = root.find("step")
    if node is None:
        return 0
    try:
        step = int((node.text or "").strip())
    except ValueError:
        raise CheckpointError(f"{path}: <step> is not an integer: {node.text!r}") from None
    if step < 0:
        raise CheckpointError(f"{path}: <step> is negative: {step}")
    return step


def checkpoint_names(ipi_input: str | os.PathLike) -> list[str]:
    """The files the checkpoints of an i-PI input are written to, as glob-free
    name stems: ``P.NAME`` for each ``<checkpoint>`` (i-PI adds ``_K`` when it
    does not overwrite)."""
    root = ET.parse(os.fspath(ipi_input)).getroot()
    output = root.find("output")
    if output is None:
        return []
    prefix = output.get("prefix", "i-pi").strip()
    names = []
    for node in output.iter("checkpoint"):
        name = node.get("filename", "restart").strip()
        names.append(f"{prefix}.{name}" if prefix else name)
    return names


def newest(folder: str | os.PathLike, ipi_input: str | os.PathLike) -> tuple[str, int] | None:
    """The restart file of ``folder`` with the highest step (ties: the newer file),
    among ``RESTART`` and the checkpoints ``ipi_input`` writes; files a kill left
    incomplete are skipped with a warning. None when there is none."""
    folder = os.fspath(folder)
    stems = checkpoint_names(ipi_input)
    candidates = []
    for entry in sorted(os.listdir(folder)):
        if entry != RESTART and not any(entry == s or (entry.startswith(s + "_") and entry[len(s) + 1:].isdigit())
                                        for s in stems):
            continue
        path = os.path.join(folder, entry)
        try:
            step = restart_step(path)
        except CheckpointError as err:
            log.warning("skipping %s", err)
            continue
        candidates.append((step, os.path.getmtime(path), path))
    if not candidates:
        return None
    step, _, path = max(candidates)
    return path, step
