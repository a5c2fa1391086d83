"""The i-PI socket protocol, both sides, in plain Python sockets.

This module speaks the wire protocol that i-PI 3.x uses with its force clients
("drivers"). It is used three ways in this project:

* **client role** (:class:`ClientRole`): talk to i-PI the way a driver does.
  The bias server and the ASE drivers in :mod:`drivers.client` use it.
* **server role** (:class:`ServerRole`): play i-PI's part towards a force client
  (a DFT code started with ``--ipi``, an MLP driver, ...). The bias-server proxy
  uses it to relay i-PI's positions to the reference engine.
* low level (:class:`Connection`): exact-length reads, validated headers and
  typed readers/writers for the INIT, POSDATA and FORCEREADY messages.

Wire format (as implemented by i-PI 3.3)
----------------------------------------
* A header is 12 ASCII bytes, upper case, right-padded with spaces. Known words:
  STATUS, READY, HAVEDATA, NEEDINIT, INIT, POSDATA, GETFORCE, FORCEREADY, EXIT.
* ``INIT``: int32 bead index, int32 length, that many bytes of init string.
* ``POSDATA``: 9 float64 cell matrix h, 9 float64 inverse cell, int32 natoms,
  3N float64 positions. h holds the lattice vectors as its *columns* and is
  written in C order, i.e. the bytes are those of ``cell_rows.T``.
* ``FORCEREADY``: float64 energy, int32 natoms, 3N float64 forces, 9 float64
  virial, int32 extras length, extras bytes (i-PI parses them as JSON when it can).
* Everything on the wire is in atomic units: bohr, hartree, hartree/bohr; the
  virial is an energy (``-stress * volume``), in hartree. Integers and floats are
  native-endian (little-endian on every machine i-PI runs on); this module uses
  little-endian explicitly.

Units on the Python side
------------------------
The data classes :class:`Positions` and :class:`ForceResult` hold angstrom, eV,
eV/angstrom and eV, with the cell as rows = lattice vectors (the ASE convention).
Conversion to and from atomic units happens only in the encoders/decoders of this
module, through :mod:`biasserver.units`.

Addresses
---------
``unix:NAME`` or ``unix:PATH`` and ``inet:HOST:PORT`` (a bare ``HOST:PORT`` also
works, and ``inet:[::1]:PORT`` for IPv6 literals). For unix sockets a bare
*name* (no ``/`` in it) follows i-PI's naming convention: i-PI turns
``<ffsocket mode='unix'><address>NAME</address>`` into the socket file
``/tmp/ipi_NAME`` (the prefix is i-PI's ``<simulation sockets_prefix=...>``,
default ``/tmp/ipi_``). Anything containing a ``/`` is taken as a file path as
is (use ``./name`` for a file in the working directory).

Not supported: i-PI's batched protocol (``batch_size`` > 1 announced in the INIT
string; :class:`ClientRole` raises :class:`UnsupportedFeatureError`) and its
shared-memory ``mode='shm'`` transport.
"""
from __future__ import annotations

import enum
import errno
import ipaddress
import json
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import numpy as np

from . import units

__all__ = [
    "HDRLEN",
    "WORDS",
    "MAX_NATOMS",
    "MAX_EXTRAS_BYTES",
    "MAX_INIT_BYTES",
    "IPI_UNIX_PREFIX",
    "ProtocolError",
    "HeaderError",
    "UnexpectedMessageError",
    "InvalidMessageError",
    "AtomCountError",
    "NonFiniteError",
    "SizeLimitError",
    "ConnectionClosedError",
    "ProtocolTimeoutError",
    "UnsupportedFeatureError",
    "Address",
    "parse_address",
    "ipi_unix_path",
    "Listener",
    "listen",
    "connect",
    "Positions",
    "ForceResult",
    "InitData",
    "Connection",
    "ClientStatus",
    "ClientRole",
    "ServerRole",
    "encode_header",
    "encode_init",
    "encode_posdata",
    "encode_forceready",
]

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

#: Length of a message header in bytes.
HDRLEN: int = 12
#: The header words of the protocol.
WORDS: tuple = (
    "STATUS",
    "READY",
    "HAVEDATA",
    "NEEDINIT",
    "INIT",
    "POSDATA",
    "GETFORCE",
    "FORCEREADY",
    "EXIT",
)
#: Largest atom count accepted in a message (sanity limit against garbage).
MAX_NATOMS: int = 10_000_000
#: Largest FORCEREADY extras string accepted, bytes.
MAX_EXTRAS_BYTES: int = 64 * 1024 * 1024
#: Largest INIT string accepted, bytes.
MAX_INIT_BYTES: int = 64 * 1024 * 1024
#: i-PI's default prefix for unix socket files (``<simulation sockets_prefix>``).
IPI_UNIX_PREFIX: str = "/tmp/ipi_"

_HEADERS = {w: w.ljust(HDRLEN).encode("ascii") for w in WORDS}
_WORD_OF = {v: k for k, v in _HEADERS.items()}

_I32 = struct.Struct("<i")
_F64 = struct.Struct("<d")
_F64_I32 = struct.Struct("<di")
_F64_LE = np.dtype("<f8")

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


class ProtocolError(Exception):
    """Base class of every error of the i-PI protocol layer.

    ``word`` is the message word the error concerns (``None`` when unknown).
    """

    def __init__(self, message: str, word: Optional[str] = None):
        super().__init__(message)
        self.word = word


class HeaderError(ProtocolError):
    """The 12 header bytes are not one of the known words."""


class UnexpectedMessageError(ProtocolError):
    """A known word arrived where the protocol does not allow it."""


class InvalidMessageError(ProtocolError):
    """A message's payload is malformed (sizes, values, encoding)."""


class AtomCountError(InvalidMessageError):
    """natoms is not positive, too large, or differs from the expected count."""


class NonFiniteError(InvalidMessageError):
    """A NaN or infinity was found in a message's floats."""


class SizeLimitError(InvalidMessageError):
    """A length field is negative or absurdly large."""


class ConnectionClosedError(ProtocolError, ConnectionError):
    """The peer closed the connection.

    ``mid_message`` is False when the close happened cleanly between messages
    (where a header was expected and zero bytes had arrived).
    """

    def __init__(self, message: str, word: Optional[str] = None, mid_message: bool = True):
        super().__init__(message, word)
        self.mid_message = mid_message


class ProtocolTimeoutError(ProtocolError, TimeoutError):
    """No data within the connection's timeout. The stream may be out of step
    afterwards if this happened mid-message; close the connection."""


class UnsupportedFeatureError(ProtocolError):
    """The peer asked for a protocol extension this module does not implement."""


# --------------------------------------------------------------------------- #
# Addresses
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Address:
    """A parsed socket address.

    ``kind`` is ``"unix"`` (then ``path`` is the socket file) or ``"inet"``
    (then ``host`` and ``port``).
    """

    kind: str
    path: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def ipi_unix_path(name: str, prefix: str = IPI_UNIX_PREFIX) -> str:
    """The socket file i-PI uses for ``<ffsocket mode='unix'><address>name``.

    i-PI prepends ``prefix`` (its ``sockets_prefix``, default ``/tmp/ipi_``) to
    the address string, so ``name='gmetad'`` gives ``/tmp/ipi_gmetad``.
    """
    return prefix + name


def parse_address(address: Union[str, Address], unix_prefix: str = IPI_UNIX_PREFIX) -> Address:
    """Parse ``unix:NAME_OR_PATH``, ``inet:HOST:PORT`` or ``HOST:PORT``.

    For ``unix:``, a value containing ``/`` is a path used as is; a bare name
    maps to i-PI's convention ``unix_prefix + name`` (``/tmp/ipi_NAME``).
    Raises ValueError on anything else.
    """
    if isinstance(address, Address):
        return address
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"empty or non-string socket address: {address!r}")
    s = address.strip()
    if s.startswith("unix:"):
        target = s[len("unix:"):]
        if target.startswith("//"):  # tolerate unix:///abs/path
            target = target[2:]
        if not target:
            raise ValueError(f"unix socket address without a name or path: {address!r}")
        path = target if "/" in target else ipi_unix_path(target, unix_prefix)
        path = os.path.expanduser(path)
        if len(os.fsencode(path)) >= 108:
            raise ValueError(
                f"unix socket path too long ({len(os.fsencode(path))} bytes, limit 107): {path!r}"
            )
        return Address("unix", path=path)
    if s.startswith("inet:"):
        s = s[len("inet:"):]
    elif s.startswith("tcp:"):
        s = s[len("tcp:"):]
    if s.startswith("["):  # [ipv6]:port
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ValueError(f"bad IPv6 socket address {address!r}; use inet:[HOST]:PORT")
        host, port_s = s[1:end], s[end + 2:]
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep or not host:
            raise ValueError(
                f"cannot parse socket address {address!r}; expected unix:NAME, "
                "unix:/path/to/socket, inet:HOST:PORT or HOST:PORT"
            )
        if ":" in host:
            raise ValueError(f"IPv6 hosts need brackets: inet:[{host}]:{port_s}")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port {port_s!r} in socket address {address!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in socket address {address!r}")
    return Address("inet", host=host, port=port)


def _is_loopback_host(host: str) -> bool:
    if host in ("", "0.0.0.0", "::", "*"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )


def _inet_addrinfos(host: str, port: int, passive: bool) -> list:
    flags = socket.AI_PASSIVE if passive else 0
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=flags)
    # IPv4 first: Fortran/C clients (QE, CP2K) resolve host names to IPv4.
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    return infos


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --------------------------------------------------------------------------- #
# Data classes (eV / angstrom)
# --------------------------------------------------------------------------- #


@dataclass
class Positions:
    """A configuration as carried by POSDATA, in angstrom.

    ``cell``: (3, 3), rows are the lattice vectors (ASE convention), angstrom.
    ``positions``: (N, 3) Cartesian positions, angstrom.
    """

    cell: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        self.cell = np.array(self.cell, dtype=np.float64).reshape(3, 3)
        self.positions = np.array(self.positions, dtype=np.float64).reshape(-1, 3)

    @property
    def natoms(self) -> int:
        """Number of atoms."""
        return int(self.positions.shape[0])


@dataclass
class ForceResult:
    """What FORCEREADY carries, in eV and angstrom.

    ``energy``: potential energy, eV. ``forces``: (N, 3), eV/angstrom.
    ``virial``: (3, 3), eV, equal to ``-stress * volume`` (ASE stress sign
    convention, Cartesian rows/columns). ``extras``: free string (a dict is
    serialised to JSON); i-PI parses it as JSON when it can.
    """

    energy: float
    forces: np.ndarray
    virial: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    extras: str = ""

    def __post_init__(self) -> None:
        self.energy = float(self.energy)
        self.forces = np.array(self.forces, dtype=np.float64).reshape(-1, 3)
        self.virial = np.array(self.virial, dtype=np.float64).reshape(3, 3)
        if isinstance(self.extras, bytes):
            self.extras = self.extras.decode("utf-8")
        elif isinstance(self.extras, dict):
            self.extras = json.dumps(self.extras)
        self.extras = str(self.extras)

    @property
    def natoms(self) -> int:
        """Number of atoms."""
        return int(self.forces.shape[0])


@dataclass(frozen=True)
class InitData:
    """An INIT message: bead (replica) index and the init string."""

    bead: int
    string: str


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _check_natoms(word: str, natoms: int, expected: Optional[int]) -> None:
    if natoms <= 0:
        raise AtomCountError(f"{word}: natoms = {natoms}, must be positive", word)
    if natoms > MAX_NATOMS:
        raise AtomCountError(
            f"{word}: natoms = {natoms} exceeds the sanity limit {MAX_NATOMS}", word
        )
    if expected is not None and natoms != expected:
        raise AtomCountError(f"{word}: natoms = {natoms} but {expected} expected", word)


def _check_finite(word: str, what: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(np.asarray(arr).reshape(-1)))[:5].ravel().tolist()
        raise NonFiniteError(
            f"{word}: non-finite value(s) in {what} (flat indices {bad})", word
        )


def _check_length(word: str, what: str, n: int, limit: int) -> None:
    if n < 0:
        raise SizeLimitError(f"{word}: negative {what} length {n}", word)
    if n > limit:
        raise SizeLimitError(f"{word}: {what} length {n} bytes exceeds the limit {limit}", word)


def _inverse_or_zeros(h: np.ndarray) -> np.ndarray:
    try:
        if abs(np.linalg.det(h)) > 0.0:
            return np.linalg.inv(h)
    except np.linalg.LinAlgError:
        pass
    return np.zeros((3, 3))


# --------------------------------------------------------------------------- #
# Encoders (Python units -> wire bytes, header included)
# --------------------------------------------------------------------------- #


def encode_header(word: str) -> bytes:
    """The 12 header bytes of ``word`` (case-insensitive, must be a known word)."""
    w = str(word).upper()
    try:
        return _HEADERS[w]
    except KeyError:
        raise ValueError(f"unknown i-PI message word {word!r}; known: {', '.join(WORDS)}") from None


def encode_init(bead: int, string: str) -> bytes:
    """INIT message: header, int32 bead index, int32 length, UTF-8 string."""
    data = string.encode("utf-8") if isinstance(string, str) else bytes(string)
    _check_length("INIT", "init string", len(data), MAX_INIT_BYTES)
    return _HEADERS["INIT"] + _I32.pack(int(bead)) + _I32.pack(len(data)) + data


def encode_posdata(pos: Positions) -> bytes:
    """POSDATA message from a :class:`Positions` in angstrom (converted to bohr).

    The cell goes out as h = cell_rows.T (lattice vectors as columns), C order,
    followed by its inverse, natoms and the positions.
    """
    _check_natoms("POSDATA", pos.natoms, None)
    _check_finite("POSDATA", "cell", pos.cell)
    _check_finite("POSDATA", "positions", pos.positions)
    h = np.ascontiguousarray(units.length_to_bohr(pos.cell).T, dtype=_F64_LE)
    ih = np.ascontiguousarray(_inverse_or_zeros(h), dtype=_F64_LE)
    q = np.ascontiguousarray(units.length_to_bohr(pos.positions), dtype=_F64_LE)
    return b"".join(
        (_HEADERS["POSDATA"], h.tobytes(), ih.tobytes(), _I32.pack(pos.natoms), q.tobytes())
    )


def encode_forceready(result: ForceResult) -> bytes:
    """FORCEREADY message from a :class:`ForceResult` in eV, eV/angstrom, eV.

    The virial goes out transposed (as i-PI's own ASE driver does; it is
    symmetric in practice).
    """
    _check_natoms("FORCEREADY", result.natoms, None)
    _check_finite("FORCEREADY", "energy", np.array([result.energy]))
    _check_finite("FORCEREADY", "forces", result.forces)
    _check_finite("FORCEREADY", "virial", result.virial)
    extras = result.extras.encode("utf-8")
    _check_length("FORCEREADY", "extras", len(extras), MAX_EXTRAS_BYTES)
    f = np.ascontiguousarray(units.force_to_atomic(result.forces), dtype=_F64_LE)
    vir = np.ascontiguousarray(units.energy_to_hartree(result.virial).T, dtype=_F64_LE)
    return b"".join(
        (
            _HEADERS["FORCEREADY"],
            _F64_I32.pack(float(units.energy_to_hartree(result.energy)), result.natoms),
            f.tobytes(),
            vir.tobytes(),
            _I32.pack(len(extras)),
            extras,
        )
    )


# --------------------------------------------------------------------------- #
# Decoders (wire bytes -> Python units); `read(n)` returns exactly n bytes
# --------------------------------------------------------------------------- #

_Read = Callable[[int, str], bytes]


def _utf8(raw: bytes, word: str, what: str) -> str:
    """Decode a message's text field, or raise InvalidMessageError naming it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessageError(f"{word}: {what} not valid UTF-8 ({exc})", word) from None


def _decode_init(read: _Read) -> InitData:
    bead, n = struct.unpack("<ii", read(8, "INIT"))
    _check_length("INIT", "init string", n, MAX_INIT_BYTES)
    text = _utf8(read(n, "INIT") if n else b"", "INIT", "init string is")
    return InitData(int(bead), text)


def _decode_posdata(read: _Read, natoms: Optional[int]) -> Positions:
    head = read(148, "POSDATA")
    h = np.frombuffer(head, dtype=_F64_LE, count=9, offset=0).reshape(3, 3)
    (n,) = _I32.unpack_from(head, 144)
    _check_natoms("POSDATA", n, natoms)
    _check_finite("POSDATA", "cell", h)
    # the inverse cell (bytes 72..144) is legacy; we ignore its values
    q = np.frombuffer(read(24 * n, "POSDATA"), dtype=_F64_LE).reshape(n, 3)
    _check_finite("POSDATA", "positions", q)
    return Positions(
        cell=units.length_to_angstrom(h.T),
        positions=units.length_to_angstrom(q),
    )


def _decode_forceready(read: _Read, natoms: Optional[int]) -> ForceResult:
    e, n = _F64_I32.unpack(read(12, "FORCEREADY"))
    _check_natoms("FORCEREADY", n, natoms)
    _check_finite("FORCEREADY", "energy", np.array([e]))
    body = read(24 * n + 76, "FORCEREADY")
    f = np.frombuffer(body, dtype=_F64_LE, count=3 * n).reshape(n, 3)
    vir = np.frombuffer(body, dtype=_F64_LE, count=9, offset=24 * n).reshape(3, 3)
    _check_finite("FORCEREADY", "forces", f)
    _check_finite("FORCEREADY", "virial", vir)
    (m,) = _I32.unpack_from(body, 24 * n + 72)
    _check_length("FORCEREADY", "extras", m, MAX_EXTRAS_BYTES)
    extras = _utf8(read(m, "FORCEREADY") if m else b"", "FORCEREADY", "extras are")
    return ForceResult(
        energy=float(units.energy_to_ev(e)),
        forces=units.force_to_ev_per_angstrom(f),
        virial=units.energy_to_ev(vir.T),
        extras=extras,
    )


# --------------------------------------------------------------------------- #
# Connection
# --------------------------------------------------------------------------- #


class Connection:
    """A connected stream socket speaking the i-PI protocol.

    ``timeout`` (seconds, ``None`` = block forever) applies to every send and
    every receive unless a method takes its own ``timeout``. After a
    :class:`ProtocolTimeoutError` or :class:`InvalidMessageError` in the middle
    of a message, the stream is out of step: close the connection.
    """

    def __init__(self, sock: socket.socket, timeout: Optional[float] = 60.0, peer: str = ""):
        self.sock = sock
        self.peer = peer or _peer_name(sock)
        self._timeout: Optional[float] = None
        self.timeout = timeout
        _set_nodelay(sock)

    # -- plumbing ---------------------------------------------------------

    @property
    def timeout(self) -> Optional[float]:
        """The per-connection I/O timeout in seconds (None = no timeout)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = None if value is None else float(value)
        self.sock.settimeout(self._timeout)

    def fileno(self) -> int:
        """The socket's file descriptor (for select)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Shut down and close the socket (idempotent)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection({self.peer!r}, timeout={self._timeout})"

    def recv_exact(self, n: int, word: str = "", timeout: Optional[float] = ...) -> bytes:
        """Read exactly ``n`` bytes (a ``recv_into`` loop).

        Raises :class:`ConnectionClosedError` if the peer closes first and
        :class:`ProtocolTimeoutError` if no data arrives within the timeout.
        ``timeout`` overrides the connection's timeout for this call.
        """
        if n == 0:
            return b""
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        if timeout is not ...:
            self.sock.settimeout(timeout)
        try:
            while pos < n:
                try:
                    got = self.sock.recv_into(view[pos:], n - pos)
                except socket.timeout:
                    raise ProtocolTimeoutError(
                        f"{word or 'read'}: timed out after {self.sock.gettimeout()} s "
                        f"with {pos} of {n} bytes received from {self.peer}",
                        word or None,
                    ) from None
                except (ConnectionResetError, BrokenPipeError) as exc:
                    raise ConnectionClosedError(
                        f"{word or 'read'}: connection to {self.peer} reset after {pos} of {n} bytes ({exc})",
                        word or None,
                        mid_message=bool(pos) or word not in ("", "header"),
                    ) from None
                if got == 0:
                    raise ConnectionClosedError(
                        f"{word or 'read'}: connection closed by {self.peer} after {pos} of {n} bytes",
                        word or None,
                        mid_message=bool(pos) or word not in ("", "header"),
                    )
                pos += got
        finally:
            if timeout is not ...:
                self.sock.settimeout(self._timeout)
        return bytes(buf)

    def send_bytes(self, data: bytes, word: str = "") -> None:
        """Send all of ``data`` (raises ConnectionClosedError / ProtocolTimeoutError)."""
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProtocolTimeoutError(
                f"{word or 'send'}: timed out sending {len(data)} bytes to {self.peer}", word or None
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosedError(
                f"{word or 'send'}: connection to {self.peer} closed while sending ({exc})", word or None
            ) from None

    # -- headers ------------------------------------------------------------

    def send_header(self, word: str) -> None:
        """Send a bare 12-byte header (STATUS, READY, GETFORCE, EXIT, ...)."""
        self.send_bytes(encode_header(word), str(word).upper())

    def recv_header(self, expected: Optional[Iterable[str]] = None,
                    timeout: Optional[float] = ...) -> str:
        """Read a header and return its word (e.g. ``"POSDATA"``).

        Raises :class:`HeaderError` (naming the bytes received) if the 12 bytes
        are not a known word, and :class:`UnexpectedMessageError` if
        ``expected`` is given and the word is not in it. A clean close before
        any byte raises :class:`ConnectionClosedError` with ``mid_message=False``.
        """
        raw = self.recv_exact(HDRLEN, "header", timeout=timeout)
        word = _WORD_OF.get(raw)
        if word is None:
            raise HeaderError(
                f"bad header from {self.peer}: received {raw!r}; expected one of {', '.join(WORDS)} "
                "(12 ASCII bytes, upper case, space padded)"
            )
        if expected is not None:
            exp = tuple(expected)
            if word not in exp:
                raise UnexpectedMessageError(
                    f"unexpected message {word} from {self.peer}; expected {' or '.join(exp)}", word
                )
        return word

    # -- typed messages -------------------------------------------------------

    def _read(self, n: int, word: str) -> bytes:
        return self.recv_exact(n, word)

    def write_init(self, bead: int, string: str) -> None:
        """Send INIT (header included): bead index and init string."""
        self.send_bytes(encode_init(bead, string), "INIT")

    def read_init(self) -> InitData:
        """Read an INIT body (after its header was consumed by :meth:`recv_header`)."""
        return _decode_init(self._read)

    def write_posdata(self, pos: Positions) -> None:
        """Send POSDATA (header included); ``pos`` in angstrom."""
        self.send_bytes(encode_posdata(pos), "POSDATA")

    def read_posdata(self, natoms: Optional[int] = None) -> Positions:
        """Read a POSDATA body (after its header); returns angstrom.

        ``natoms``: the expected atom count, checked when given.
        """
        return _decode_posdata(self._read, natoms)

    def write_forceready(self, result: ForceResult) -> None:
        """Send FORCEREADY (header included); ``result`` in eV, eV/angstrom."""
        self.send_bytes(encode_forceready(result), "FORCEREADY")

    def read_forceready(self, natoms: Optional[int] = None) -> ForceResult:
        """Read a FORCEREADY body (after its header); returns eV, eV/angstrom.

        ``natoms``: the expected atom count, checked when given.
        """
        return _decode_forceready(self._read, natoms)


def _peer_name(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "peer"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    if peer:
        return str(peer)
    # an unbound unix client has no address: name it by its process (Linux)
    if sock.family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
        try:
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
        except OSError:
            pid = 0
        if pid > 0:
            return f"unix peer pid {pid}"
    return "unix peer"


# --------------------------------------------------------------------------- #
# Listening and connecting
# --------------------------------------------------------------------------- #


class Listener:
    """A listening server socket (see :func:`listen`).

    ``address`` is the bound address (with the real port if 0 was requested).
    Closing removes the unix socket file. Usable as a context manager.
    """

    def __init__(self, sock: socket.socket, address: Address):
        self.socket = sock
        self.address = address
        self._closed = False

    def accept(self, timeout: Optional[float] = None, io_timeout: Optional[float] = 60.0) -> Connection:
        """Wait up to ``timeout`` seconds (None = forever) for a client.

        Returns a :class:`Connection` with I/O timeout ``io_timeout`` seconds
        (TCP_NODELAY set on inet sockets). Raises ProtocolTimeoutError on timeout.
        """
        self.socket.settimeout(timeout)
        try:
            sock, _ = self.socket.accept()
        except socket.timeout:
            raise ProtocolTimeoutError(
                f"no client connected to {self.address} within {timeout} s"
            ) from None
        return Connection(sock, timeout=io_timeout)

    def fileno(self) -> int:
        """File descriptor of the listening socket (for select)."""
        return self.socket.fileno()

    def close(self) -> None:
        """Close the socket and remove a unix socket file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.socket.close()
        finally:
            if self.address.kind == "unix" and self.address.path:
                try:
                    if stat.S_ISSOCK(os.lstat(self.address.path).st_mode):
                        os.unlink(self.address.path)
                except OSError:
                    pass

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Listener({self.address})"


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ValueError(f"{path!r} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody listens
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"unix socket {path!r} is in use by a live server")


def listen(address: Union[str, Address], allow_remote: bool = False, backlog: int = 8) -> Listener:
    """Open a listening socket at ``address`` (see :func:`parse_address`).

    inet: binds loopback hosts only unless ``allow_remote=True`` (ValueError
    otherwise); port 0 picks a free port (read it from ``Listener.address``).
    unix: a stale socket file (no live server behind it) is removed first; the
    new file gets mode 0600.
    """
    addr = parse_address(address)
    if addr.kind == "unix":
        path = addr.path
        _remove_stale_unix_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # chmod before listen(): nobody can connect in between
            os.chmod(path, 0o600)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return Listener(sock, addr)

    host = addr.host or ""
    if not allow_remote and not _is_loopback_host(host):
        raise ValueError(
            f"refusing to listen on non-loopback host {host!r} ({addr}); the i-PI protocol has no "
            "authentication. Use 127.0.0.1/localhost, a unix socket, or pass allow_remote=True."
        )
    last_exc: Optional[Exception] = None
    for family, type_, proto, _, sockaddr in _inet_addrinfos(host, addr.port, passive=True):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _set_nodelay(sock)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            last_exc = exc
            continue
        bound = sock.getsockname()
        return Listener(sock, Address("inet", host=host or bound[0], port=bound[1]))
    raise OSError(f"could not listen on {addr}: {last_exc}")


def connect(address: Union[str, Address], timeout: float = 60.0,
            io_timeout: Optional[float] = 60.0, retry_interval: float = 0.05) -> Connection:
    """Connect to a server at ``address``, retrying until ``timeout`` seconds.

    The server may start later than the client: refused connections and missing
    unix socket files are retried every ``retry_interval`` seconds. Returns a
    :class:`Connection` with I/O timeout ``io_timeout`` (None = none); inet
    sockets get TCP_NODELAY. Raises ProtocolTimeoutError when the deadline passes.
    """
    addr = parse_address(address)
    deadline = time.monotonic() + float(timeout)
    last_exc: Optional[Exception] = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            if addr.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(max(0.05, min(5.0, remaining)))
                    sock.connect(addr.path)
                except BaseException:
                    sock.close()
                    raise
                return Connection(sock, timeout=io_timeout, peer=str(addr))
            for family, type_, proto, _, sockaddr in _inet_addrinfos(addr.host, addr.port, passive=False):
                sock = socket.socket(family, type_, proto)
                try:
                    _set_nodelay(sock)
                    sock.settimeout(max(0.05, min(5.0, remaining)))
                    sock.connect(sockaddr)
                except OSError as exc:
                    sock.close()
                    last_exc = exc
                    continue
                return Connection(sock, timeout=io_timeout, peer=str(addr))
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout) as exc:
            last_exc = exc
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN, errno.ECONNRESET):
                raise
            last_exc = exc
        if time.monotonic() + retry_interval > deadline:
            raise ProtocolTimeoutError(
                f"could not connect to {addr} within {timeout} s (last error: {last_exc})"
            )
        time.sleep(retry_interval)


# --------------------------------------------------------------------------- #
# Roles
# --------------------------------------------------------------------------- #


class ClientStatus(str, enum.Enum):
    """A force client's answer to STATUS."""

    READY = "READY"
    NEEDINIT = "NEEDINIT"
    HAVEDATA = "HAVEDATA"


def _batch_size_of(init_string: str) -> int:
    """i-PI >= 3.3 announces batching as a ``batch_size:N`` token in INIT."""
    for token in init_string.split(","):
        key, sep, value = token.partition(":")
        if sep and key.strip() == "batch_size":
            try:
                return int(value.strip())
            except ValueError:
                return 1
    return 1


class ClientRole:
    """Talk to i-PI (or any server of this protocol) as a force driver does.

    Pull style, so a proxy can sit in the middle::

        role = ClientRole(connect("unix:gmetad"))
        while (pos := role.wait_positions()) is not None:
            role.send_forces(compute(pos))

    or simply ``role.serve(compute)``. STATUS is answered automatically:
    NEEDINIT before the first INIT (and, with ``reinit_each_step=True``, again
    after every FORCEREADY, as Quantum ESPRESSO does), HAVEDATA while a result is
    pending, READY otherwise. ``natoms``, if given, is enforced on POSDATA.
    ``init_bead`` and ``init_string`` hold the last INIT received.
    """

    def __init__(self, conn: Connection, natoms: Optional[int] = None,
                 need_init: bool = True, reinit_each_step: bool = False,
                 on_init: Optional[Callable[[InitData], None]] = None):
        self.conn = conn
        self.natoms = natoms
        self.reinit_each_step = reinit_each_step
        self.on_init = on_init
        self.initialized = not need_init
        self.have_data = False
        self.exited = False
        self.init_bead: Optional[int] = None
        self.init_string: Optional[str] = None
        self.steps = 0

    def _status_reply(self) -> str:
        if not self.initialized:
            return "NEEDINIT"
        if self.have_data:
            return "HAVEDATA"
        return "READY"

    def _handle_init(self) -> None:
        init = self.conn.read_init()
        nbatch = _batch_size_of(init.string)
        if nbatch > 1:
            raise UnsupportedFeatureError(
                f"INIT: server announced batch_size:{nbatch}; the batched i-PI protocol is not "
                "supported, set batch_size to 1 in the <ffsocket>", "INIT"
            )
        self.init_bead, self.init_string = init.bead, init.string
        self.initialized = True
        if self.on_init is not None:
            self.on_init(init)

    def _next_header(self, timeout: Optional[float] = ...) -> Optional[str]:
        """Next word, or None when the server exited or closed between messages."""
        try:
            word = self.conn.recv_header(timeout=timeout)
        except ConnectionClosedError as exc:
            if exc.mid_message:
                raise
            self.exited = True
            return None
        if word == "EXIT":
            self.exited = True
            return None
        return word

    def wait_positions(self, timeout: Optional[float] = ...) -> Optional[Positions]:
        """Serve STATUS/INIT until POSDATA arrives and return it (angstrom).

        Returns None when the server sends EXIT or closes the connection between
        messages. ``timeout`` (seconds) overrides the connection timeout while
        waiting for the next header (i-PI may be idle for a long time when other
        force fields are slow; pass None to wait forever).
        """
        if self.exited:
            return None
        if self.have_data:
            raise UnexpectedMessageError(
                "wait_positions called while a result is pending; call send_forces first"
            )
        while True:
            word = self._next_header(timeout)
            if word is None:
                return None
            if word == "STATUS":
                self.conn.send_header(self._status_reply())
            elif word == "INIT":
                self._handle_init()
            elif word == "POSDATA":
                pos = self.conn.read_posdata(self.natoms)
                if self.natoms is None:
                    self.natoms = pos.natoms
                self.have_data = True
                return pos
            elif word == "GETFORCE":
                raise UnexpectedMessageError(
                    "GETFORCE received before any POSDATA: no forces to send", word
                )
            else:
                raise UnexpectedMessageError(
                    f"a client does not expect {word} from the server", word
                )

    def send_forces(self, result: ForceResult) -> bool:
        """Answer STATUS with HAVEDATA until GETFORCE, then send FORCEREADY.

        ``result`` in eV, eV/angstrom; its atom count must match the POSDATA.
        Returns False if the server sent EXIT or closed instead (nothing sent).
        """
        if not self.have_data:
            raise UnexpectedMessageError("send_forces called without pending positions")
        if self.natoms is not None and result.natoms != self.natoms:
            raise AtomCountError(
                f"FORCEREADY: result has {result.natoms} atoms but POSDATA had {self.natoms}", "FORCEREADY"
            )
        while True:
            word = self._next_header()
            if word is None:
                return False
            if word == "STATUS":
                self.conn.send_header("HAVEDATA")
            elif word == "GETFORCE":
                self.conn.write_forceready(result)
                self.have_data = False
                self.steps += 1
                if self.reinit_each_step:
                    self.initialized = False
                return True
            else:
                raise UnexpectedMessageError(
                    f"expected STATUS or GETFORCE while holding forces, got {word}", word
                )

    def serve(self, compute: Callable[[Positions], ForceResult],
              max_steps: Optional[int] = None, idle_timeout: Optional[float] = ...) -> int:
        """Loop: positions in, ``compute(positions)`` out, until EXIT or close.

        ``compute`` takes :class:`Positions` (angstrom) and returns a
        :class:`ForceResult` (eV, eV/angstrom). Stops after ``max_steps`` force
        evaluations if given. Returns the number of evaluations served.
        """
        served = 0
        while max_steps is None or served < max_steps:
            pos = self.wait_positions(timeout=idle_timeout)
            if pos is None:
                break
            if not self.send_forces(compute(pos)):
                break
            served += 1
        return served


class ServerRole:
    """Play i-PI's part towards a force client (DFT code, MLP driver, ...).

    ``compute_timeout`` (seconds, None = forever, as i-PI) is used while the
    client computes, i.e. for replies that follow POSDATA; all other I/O uses
    the connection timeout.

    Typical step::

        srv = ServerRole(listener.accept())
        result = srv.evaluate(Positions(cell, positions))   # eV, eV/angstrom

    or the individual messages: :meth:`status`, :meth:`send_init`,
    :meth:`send_positions`, :meth:`get_forces`, :meth:`send_exit`.
    """

    def __init__(self, conn: Connection, compute_timeout: Optional[float] = None,
                 status_after_posdata: bool = True):
        self.conn = conn
        self.compute_timeout = compute_timeout
        self.status_after_posdata = status_after_posdata
        self.last_status: Optional[ClientStatus] = None
        self._busy = False  # POSDATA sent, result not collected

    def status(self) -> ClientStatus:
        """Send STATUS and return the client's answer (READY, NEEDINIT or HAVEDATA)."""
        self.conn.send_header("STATUS")
        timeout = self.compute_timeout if self._busy else ...
        word = self.conn.recv_header(expected=("READY", "NEEDINIT", "HAVEDATA"), timeout=timeout)
        self.last_status = ClientStatus(word)
        return self.last_status

    def send_init(self, bead: int = 0, string: str = "") -> None:
        """Send INIT with the bead (replica) index and init string."""
        self.conn.write_init(bead, string)

    def send_positions(self, positions: Positions) -> None:
        """Send POSDATA; ``positions`` in angstrom (cell rows = lattice vectors)."""
        self.conn.write_posdata(positions)
        self._busy = True

    def get_forces(self, natoms: Optional[int] = None) -> ForceResult:
        """Send GETFORCE and read FORCEREADY; returns eV, eV/angstrom, eV.

        ``natoms`` is checked against the reply when given.
        """
        self.conn.send_header("GETFORCE")
        timeout = self.compute_timeout if self._busy else ...
        self.conn.recv_header(expected=("FORCEREADY",), timeout=timeout)
        result = self.conn.read_forceready(natoms)
        self._busy = False
        return result

    def send_exit(self) -> None:
        """Send EXIT (ignored if the client is already gone)."""
        try:
            self.conn.send_header("EXIT")
        except ProtocolError:
            pass

    def evaluate(self, positions: Positions, bead: int = 0, init_string: str = "") -> ForceResult:
        """One full force evaluation, as i-PI does it.

        STATUS; INIT if the client answers NEEDINIT (some clients, e.g. Quantum
        ESPRESSO, ask every step); STATUS must then be READY; POSDATA; then
        (with ``status_after_posdata``) STATUS until HAVEDATA; GETFORCE ->
        FORCEREADY. Returns a :class:`ForceResult` in eV, eV/angstrom, eV.
        """
        st = self.status()
        if st is ClientStatus.NEEDINIT:
            self.send_init(bead, init_string)
            st = self.status()
        if st is not ClientStatus.READY:
            raise UnexpectedMessageError(
                f"client answered {st.value} to STATUS where READY was needed before POSDATA", st.value
            )
        self.send_positions(positions)
        if self.status_after_posdata:
            st = self.status()
            if st is not ClientStatus.HAVEDATA:
                raise UnexpectedMessageError(
                    f"client answered {st.value} to STATUS after POSDATA; HAVEDATA expected", st.value
                )
        return self.get_forces(positions.natoms)
