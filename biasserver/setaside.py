"""Setting aside what an output file recorded after a restart step.

A job restarted from step S (i-PI's checkpoint, or the step a restarted server
redoes) must not keep the frames or hills of steps >= S: the run recomputes
them. They are never deleted: :func:`split` moves them, byte for byte, into a
side file (:func:`side_path`: ``HILLS.after-<S>``, ``frames.after-<S>.extxyz``)
and rewrites ``path`` with the rest. Both writes are crash-safe: the side file
is complete on disk (temporary file, fsync, rename) before ``path`` is replaced
the same way, so a crash at any point leaves every record in ``path``, in the
side file, or in both.
"""
from __future__ import annotations

import os


def side_path(path: str, step: int) -> str:
    """The first free side-file name for the records of ``path`` from ``step`` on:
    ``HILLS.after-<step>``, ``frames.after-<step>.extxyz`` (the extension kept, so
    that readers recognise the format), then ``.after-<step>.1`` and so on."""
    root, ext = os.path.splitext(path)
    if not ext or "/" in ext:
        root, ext = path, ""
    candidate, n = f"{root}.after-{step}{ext}", 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{root}.after-{step}.{n}{ext}"
    return candidate


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data``: temporary file, fsync, rename, fsync of the folder."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def split(path: str, step: int, keep: bytes, later: bytes) -> str | None:
    """Write ``later`` (the records of steps >= ``step``) to a side file, then
    ``keep`` to ``path``; returns the side file's name (None when ``later`` is
    empty: ``path`` is left untouched)."""
    if not later:
        return None
    side = side_path(path, step)
    write_atomic(side, later)
    write_atomic(path, keep)
    return side
