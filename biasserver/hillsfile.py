"""The hills file: a self-describing, append-only text record of a G-metaD bias.

Format (version 1). Header lines start with ``#!``::

    #! gmetad-hills 1
    #! symmetry {"elements": [...], "tables": {"Si": [[kind, e1, e2, Rc, c1, c2, c3], ...]}}
    #! bias {"height": ..., "width": ..., "stride": ..., "species": {...}, ...}
    #! dimension Si 26
    #! system {"formula": "Si64", "pbc": [true, true, true]}
    #! fields id step element height centre[D] metric[M]

then one line per hill record, whitespace separated:

- ``id``: integer hill index within its element (0, 1, ...). A later record with
  an id already seen replaces that hill (this is how a merge by compression is
  recorded without rewriting the file);
- ``step``: the MD step of the deposition (or of the last merge);
- ``element``: the chemical symbol of the atoms the hill biases;
- ``height``: h in eV;
- ``centre``: the D symmetry-function values mu (dimensionless);
- ``metric``: the inverse covariance A in G units: for adaptive hills its upper
  triangle, row by row (D (D + 1) / 2 values); for isotropic hills one value,
  1 / sigma_G^2.

A hill contributes h exp(-(G - mu)^T A (G - mu) / 2) to the energy of every atom
of its element (times the element's coefficient). Numbers are written in their
shortest round-trip decimal form (the digits of Python's ``repr``; small and
large magnitudes in exponent form, e.g. ``0.00001`` or ``1e-5``, the reader
takes either), so a loaded bias is bit-identical to the saved one.

Crash safety of :class:`HillsWriter`: the records of one deposition reach the
operating system with one ``write`` on an ``O_APPEND`` descriptor before the
deposition returns, so a crash of the process (killed, segfault, an exception)
loses nothing recorded; it can leave at most a final line without its newline,
which the reader ignores and the next writer cuts off. ``fsync`` (the data on
disk) runs in a background thread after each write, so a crash of the machine
(power loss, kernel panic) can lose the depositions written since the last
completed ``fsync``: those of the last few milliseconds, in practice the last
deposition or none. ``close()`` waits for the final ``fsync``.

The ``bias`` line holds every bias parameter, the covariance convention
``jacobian`` ("folded" or "images") included; a key missing from an older file
takes its default ("folded"), which is what that file was written with.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import orjson

MAGIC = "gmetad-hills"
VERSION = 1


class HillsFileError(ValueError):
    """A hills file is malformed or does not match the bias; the message names file and line."""


@dataclass
class HillRecord:
    """One line of a hills file (metric: (D, D) matrix or a scalar)."""

    id: int
    step: int
    element: str
    height: float
    centre: np.ndarray
    metric: np.ndarray | float


@dataclass
class HillsFile:
    """The parsed content of a hills file."""

    symmetry: dict
    bias: dict
    dimensions: dict[str, int]
    records: list[HillRecord] = field(default_factory=list)
    #: the structure the hills were deposited on (optional ``#! system`` line)
    system: dict | None = None


def header(symmetry: dict, bias: dict, dimensions: dict[str, int], system: dict | None = None) -> str:
    """The header text of a hills file."""
    lines = [f"#! {MAGIC} {VERSION}",
             f"#! symmetry {json.dumps(symmetry)}",
             f"#! bias {json.dumps(bias)}"]
    lines += [f"#! dimension {e} {d}" for e, d in dimensions.items()]
    if system is not None:
        lines.append(f"#! system {json.dumps(system)}")
    lines.append("#! fields id step element height centre[D] metric[M]")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=None)
def _upper_triangle(dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(dim)


def _shortest(numbers: np.ndarray) -> list[bytes]:
    """Rows of a 2-d float64 array as space-separated shortest round-trip decimals
    (orjson's formatter, in C: the digits of Python's repr at a tenth of its cost)."""
    text = orjson.dumps(np.ascontiguousarray(numbers, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY)
    return text[2:-2].replace(b",", b" ").split(b"] [")


def format_records(records: list[HillRecord]) -> bytes:
    """Hill records as lines of a hills file (each with its newline), the numbers
    of all records of one shape (element dimension, adaptive or isotropic)
    formatted at once: one batch for a deposition of one element."""
    texts: list = [None] * len(records)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, r in enumerate(records):
        by_shape.setdefault((len(r.centre), np.ndim(r.metric)), []).append(k)
    for (dim, ndim), rows in by_shape.items():
        group = [records[k] for k in rows]
        metrics = np.array([r.metric for r in group], dtype=np.float64)
        values = metrics[:, _upper_triangle(dim)[0], _upper_triangle(dim)[1]] if ndim == 2 \
            else metrics.reshape(-1, 1)
        numbers = np.concatenate([np.array([[float(r.height)] for r in group]),
                                  np.array([r.centre for r in group], dtype=np.float64), values], axis=1)
        for k, text in zip(rows, _shortest(numbers)):
            texts[k] = text
    return b"".join(b"%d %d %s %s\n" % (r.id, r.step, r.element.encode(), text)
                    for r, text in zip(records, texts))


def format_record(record: HillRecord) -> str:
    """One hill record as a line (with its newline)."""
    return format_records([record]).decode()


def read(path: str | os.PathLike, header_only: bool = False) -> HillsFile:
    """Parse a hills file (with header_only, stop before the first record); errors
    name the file and line."""
    symmetry = bias = system = None
    dimensions: dict[str, int] = {}
    records: list[HillRecord] = []
    with open(path) as handle:
        if header_only:   # the header lines alone, however many hills follow
            text = "".join(itertools.takewhile(lambda line: line.startswith("#") or not line.strip(), handle))
        else:
            text = handle.read()
    lines = text.split("\n")
    if text and not text.endswith("\n"):
        warnings.warn(f"{path}: ignoring an incomplete last line (the writer was interrupted)")
        lines = lines[:-1]
    for lineno, line in enumerate(lines, 1):
        where = f"{path}, line {lineno}"
        if not line.strip():
            continue
        if line.startswith("#!"):
            words = line[2:].split(None, 1)
            key, rest = words[0], (words[1] if len(words) > 1 else "")
            try:
                if key == MAGIC:
                    if int(rest) != VERSION:
                        raise HillsFileError(f"{where}: hills file version {rest}, this reader knows {VERSION}")
                elif key == "symmetry":
                    symmetry = json.loads(rest)
                elif key == "bias":
                    bias = json.loads(rest)
                elif key == "dimension":
                    element, dim = rest.split()
                    dimensions[element] = int(dim)
                elif key == "system":
                    system = json.loads(rest)
            except (ValueError, json.JSONDecodeError) as err:
                if isinstance(err, HillsFileError):
                    raise
                raise HillsFileError(f"{where}: malformed header line: {err}") from None
            continue
        if line.startswith("#"):
            continue
        if header_only:
            break
        if lineno == 1 or symmetry is None or bias is None:
            raise HillsFileError(f"{where}: hill record before the '#! {MAGIC}' header")
        words = line.split()
        try:
            element = words[2]
            dim = dimensions[element]
        except (IndexError, KeyError):
            raise HillsFileError(f"{where}: record for an element with no '#! dimension' line") from None
        adaptive = bias.get("covariance") == "adaptive"
        n_metric = dim * (dim + 1) // 2 if adaptive else 1
        if len(words) != 4 + dim + n_metric:
            raise HillsFileError(f"{where}: expected {4 + dim + n_metric} columns for a "
                                 f"{bias.get('covariance')} hill of dimension {dim}, got {len(words)}")
        try:
            numbers = np.array([float(w) for w in words[4:]])
            record = HillRecord(int(words[0]), int(words[1]), element, float(words[3]),
                                numbers[:dim], 0.0)
        except ValueError:
            raise HillsFileError(f"{where}: not a number in a hill record") from None
        if not np.all(np.isfinite(numbers)) or not np.isfinite(record.height):
            raise HillsFileError(f"{where}: non-finite value in a hill record")
        if adaptive:
            metric = np.zeros((dim, dim))
            iu = np.triu_indices(dim)
            metric[iu] = numbers[dim:]
            metric.T[iu] = numbers[dim:]
            record.metric = metric
        else:
            record.metric = float(numbers[dim])
        records.append(record)
    if symmetry is None or bias is None:
        raise HillsFileError(f"{path}: not a hills file (no '#! {MAGIC}' header with symmetry and bias lines)")
    return HillsFile(symmetry, bias, dimensions, records, system)


class HillsWriter:
    """Appends hill records to a hills file: whole lines, one ``write`` per call
    (a crash of the process loses nothing written), ``fsync`` in a background
    thread (see the module docstring for what a crash of the machine can lose)."""

    def __init__(self, path: str | os.PathLike, header_text: str):
        self.path = os.fspath(path)
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if not fresh:
            _drop_partial_line(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._syncer = _Syncer(self._fd, self.path)
        if fresh:
            self._write(header_text.encode())
            self._syncer.wait()      # the header is on disk before any record

    def _write(self, data: bytes) -> None:
        self._syncer.check()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._syncer.request()

    def append(self, records: list[HillRecord]) -> None:
        if records:
            self._write(format_records(records))

    def close(self) -> None:
        """Wait for the last fsync, then close the file (an fsync error is raised here)."""
        if self._fd < 0:
            return
        try:
            self._syncer.stop()
        finally:
            os.close(self._fd)
            self._fd = -1


class _Syncer:
    """A daemon thread that fsyncs a file descriptor whenever asked; requests that
    arrive during an fsync are served by one more fsync. An fsync error is kept and
    raised by the writer's next call."""

    def __init__(self, fd: int, path: str):
        self._fd, self._path = fd, path
        self._cond = threading.Condition()
        self._requested = self._done = 0
        self._error: OSError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"fsync {os.path.basename(path)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._done == self._requested and not self._stopping:
                    self._cond.wait()
                if self._done == self._requested:
                    return
                target = self._requested
            try:
                os.fsync(self._fd)
            except OSError as err:
                with self._cond:
                    self._error = err
            with self._cond:
                self._done = target
                self._cond.notify_all()

    def request(self) -> None:
        with self._cond:
            self._requested += 1
            self._cond.notify_all()

    def check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(err.errno, f"{self._path}: fsync failed: {err.strerror}")

    def wait(self) -> None:
        """Block until every requested fsync is done."""
        with self._cond:
            while self._done != self._requested:
                self._cond.wait()
        self.check()

    def stop(self) -> None:
        self.wait()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()


def _drop_partial_line(path: str) -> None:
    """Truncate an interrupted final line so that new records start on a line of their own."""
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 1))
        if size == 0 or handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def write(path: str | os.PathLike, header_text: str, records: list[HillRecord]) -> None:
    """Write a whole hills file atomically (temporary file, fsync, rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(header_text.encode())
        for start in range(0, len(records), 4096):
            handle.write(format_records(records[start: start + 4096]))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def set_aside(path: str | os.PathLike, step: int) -> str | None:
    """Move the records of steps >= ``step`` (and an interrupted last line) of the
    hills file ``path`` into a side file ``path.after-<step>`` (after a copy of
    the header, so that it reads as a hills file), rewriting ``path`` crash-safely
    with the header and the earlier records, byte for byte (see
    :mod:`biasserver.setaside`). Returns the side file's name, or None when no
    record was set aside."""
    from . import setaside
    path = os.fspath(path)
    with open(path, "rb") as handle:
        data = handle.read()
    keep, later = [], []
    for line in data.splitlines(keepends=True):
        words = line.split()
        if not line.endswith(b"\n"):
            later.append(line)   # a record the writer did not finish
        elif line.startswith(b"#") or not words:
            keep.append(line)
        else:
            try:
                late = int(words[1]) >= step
            except (IndexError, ValueError):
                raise HillsFileError(f"{path}: record without an integer step: "
                                     f"{line[:60].decode(errors='replace')!r}") from None
            (later if late else keep).append(line)
    header_lines = [line for line in keep if line.startswith(b"#!")]
    return setaside.split(path, step, b"".join(keep), b"".join(header_lines + later) if later else b"")
