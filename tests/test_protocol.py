"""Tests of biasserver.protocol: real sockets, real i-PI driver, no mocks."""
from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ase import units as ase_units
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biasserver import protocol as P
from biasserver import units as U
from biasserver.protocol import (
    AtomCountError,
    ClientRole,
    ClientStatus,
    Connection,
    ConnectionClosedError,
    ForceResult,
    HeaderError,
    InvalidMessageError,
    NonFiniteError,
    Positions,
    ProtocolError,
    ProtocolTimeoutError,
    ServerRole,
    SizeLimitError,
    UnexpectedMessageError,
    UnsupportedFeatureError,
)

from ipi_helpers import stop_process, unique_socket_name

IO_TIMEOUT = 5.0


# --------------------------------------------------------------------------- #
# fixtures and helpers
# --------------------------------------------------------------------------- #


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ca, cb = Connection(a, timeout=IO_TIMEOUT), Connection(b, timeout=IO_TIMEOUT)
    try:
        yield ca, cb
    finally:
        ca.close()
        cb.close()


def random_positions(n=5, seed=0, triclinic=True) -> Positions:
    rng = np.random.default_rng(seed)
    cell = np.diag([5.0, 6.0, 7.0])
    if triclinic:
        cell[1, 0] = 1.3
        cell[2, 0] = -0.7
        cell[2, 1] = 0.9
    return Positions(cell=cell, positions=rng.uniform(0, 5, (n, 3)))


def random_result(n=5, seed=1, extras='{"a": 1}') -> ForceResult:
    rng = np.random.default_rng(seed)
    vir = rng.normal(size=(3, 3))
    return ForceResult(energy=rng.normal() * 10, forces=rng.normal(size=(n, 3)),
                       virial=vir + vir.T, extras=extras)


def run_in_thread(fn, *args, **kwargs):
    """Run fn in a daemon thread; returns (thread, box) with box['result'|'error']."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def join(t, box, timeout=10.0):
    t.join(timeout)
    assert not t.is_alive(), "thread did not finish in time"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# --------------------------------------------------------------------------- #
# units
# --------------------------------------------------------------------------- #


def test_units_match_ase():
    assert U.BOHR == pytest.approx(ase_units.Bohr, rel=1e-15)
    assert U.HARTREE == pytest.approx(ase_units.Hartree, rel=1e-15)
    assert U.HARTREE_PER_BOHR == pytest.approx(ase_units.Hartree / ase_units.Bohr, rel=1e-15)
    assert U.length_to_bohr(ase_units.Bohr) == pytest.approx(1.0, rel=1e-15)
    assert U.energy_to_ev(1.0) == pytest.approx(ase_units.Hartree, rel=1e-15)
    f = np.array([1.0, -2.0])
    np.testing.assert_allclose(U.force_to_atomic(U.force_to_ev_per_angstrom(f)), f, rtol=1e-15)


def test_posdata_wire_layout_atomic_units_and_columns(pair):
    """Bytes on the wire: bohr, h = lattice vectors as columns, C order."""
    ca, cb = pair
    pos = random_positions(3)
    raw = P.encode_posdata(pos)
    assert raw[:12] == b"POSDATA     "
    h = np.frombuffer(raw, "<f8", 9, 12).reshape(3, 3)
    ih = np.frombuffer(raw, "<f8", 9, 84).reshape(3, 3)
    (n,) = struct.unpack_from("<i", raw, 156)
    q = np.frombuffer(raw, "<f8", 9, 160).reshape(3, 3)
    assert n == 3 and len(raw) == 160 + 72
    np.testing.assert_allclose(h, pos.cell.T / ase_units.Bohr, rtol=1e-14)
    # column 0 of h is the first lattice vector a
    np.testing.assert_allclose(h[:, 0] * ase_units.Bohr, pos.cell[0], rtol=1e-14)
    np.testing.assert_allclose(ih @ h, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(q, pos.positions / ase_units.Bohr, rtol=1e-14)


def test_forceready_wire_layout_atomic_units(pair):
    res = random_result(2, extras="xyz")
    raw = P.encode_forceready(res)
    assert raw[:12] == b"FORCEREADY  "
    e, n = struct.unpack_from("<di", raw, 12)
    f = np.frombuffer(raw, "<f8", 6, 24).reshape(2, 3)
    vir = np.frombuffer(raw, "<f8", 9, 72).reshape(3, 3)
    (m,) = struct.unpack_from("<i", raw, 144)
    assert n == 2 and m == 3 and raw[148:] == b"xyz"
    assert e == pytest.approx(res.energy / ase_units.Hartree, rel=1e-15)
    np.testing.assert_allclose(f, res.forces * ase_units.Bohr / ase_units.Hartree, rtol=1e-14)
    np.testing.assert_allclose(vir.T, res.virial / ase_units.Hartree, rtol=1e-14)


# --------------------------------------------------------------------------- #
# round trips through a real socketpair
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("word", P.WORDS)
def test_header_round_trip(pair, word):
    ca, cb = pair
    ca.send_header(word.lower())
    assert cb.recv_header() == word


def test_init_round_trip(pair):
    ca, cb = pair
    ca.write_init(3, "param: 1, ünïcode")
    assert cb.recv_header() == "INIT"
    init = cb.read_init()
    assert init == P.InitData(3, "param: 1, ünïcode")
    ca.write_init(0, "")
    assert cb.recv_header(expected=["INIT"]) == "INIT"
    assert cb.read_init() == P.InitData(0, "")


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_posdata_round_trip(pair, n):
    ca, cb = pair
    pos = random_positions(n, seed=n)
    ca.write_posdata(pos)
    assert cb.recv_header() == "POSDATA"
    got = cb.read_posdata(n)
    np.testing.assert_allclose(got.cell, pos.cell, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(got.positions, pos.positions, rtol=1e-14, atol=1e-14)
    assert got.natoms == n


@pytest.mark.parametrize("extras", ["", "{}", '{"dipole": [1, 2, 3]}', "ü" * 1000])
def test_forceready_round_trip(pair, extras):
    ca, cb = pair
    res = random_result(4, extras=extras)
    cb.write_forceready(res)
    assert ca.recv_header() == "FORCEREADY"
    got = ca.read_forceready(4)
    assert got.energy == pytest.approx(res.energy, rel=1e-15)
    np.testing.assert_allclose(got.forces, res.forces, rtol=1e-14)
    np.testing.assert_allclose(got.virial, res.virial, rtol=1e-14)
    assert got.extras == extras


def test_non_symmetric_virial_round_trips(pair):
    ca, cb = pair
    res = ForceResult(1.0, np.ones((1, 3)), np.arange(9.0).reshape(3, 3))
    cb.write_forceready(res)
    ca.recv_header()
    np.testing.assert_allclose(ca.read_forceready().virial, res.virial, rtol=1e-14)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def test_bad_header_names_bytes(pair):
    ca, cb = pair
    ca.send_bytes(b"HELLO_WORLD!")
    with pytest.raises(HeaderError, match=r"HELLO_WORLD!"):
        cb.recv_header()


@pytest.mark.parametrize("raw", [b"status      ", b"READY\0\0\0\0\0\0\0", b"\xff" * 12, b" READY      "])
def test_bad_header_variants(pair, raw):
    ca, cb = pair
    ca.send_bytes(raw)
    with pytest.raises(HeaderError) as ei:
        cb.recv_header()
    assert repr(raw) in str(ei.value)


def test_unexpected_header(pair):
    ca, cb = pair
    ca.send_header("EXIT")
    with pytest.raises(UnexpectedMessageError, match="EXIT"):
        cb.recv_header(expected=("READY", "HAVEDATA"))


def test_wrong_natoms(pair):
    ca, cb = pair
    ca.write_posdata(random_positions(5))
    cb.recv_header()
    with pytest.raises(AtomCountError, match=r"POSDATA: natoms = 5 but 4 expected"):
        cb.read_posdata(4)
    cb.write_forceready(random_result(3))
    ca.recv_header()
    with pytest.raises(AtomCountError, match=r"FORCEREADY: natoms = 3 but 2 expected"):
        ca.read_forceready(2)


@pytest.mark.parametrize("natoms", [0, -1, P.MAX_NATOMS + 1, 2**31 - 1])
def test_absurd_natoms(pair, natoms):
    ca, cb = pair
    ca.send_bytes(b"POSDATA     " + np.zeros(18).tobytes() + struct.pack("<i", natoms))
    cb.recv_header()
    with pytest.raises(AtomCountError, match=r"POSDATA: natoms"):
        cb.read_posdata()
    ca.send_bytes(b"FORCEREADY  " + struct.pack("<di", 0.0, natoms))
    cb.recv_header()
    with pytest.raises(AtomCountError, match=r"FORCEREADY: natoms"):
        cb.read_forceready()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected_on_read(pair, bad):
    ca, cb = pair
    raw = bytearray(P.encode_posdata(random_positions(2)))
    struct.pack_into("<d", raw, 160 + 8, bad)  # positions[0, 1]
    ca.send_bytes(bytes(raw))
    cb.recv_header()
    with pytest.raises(NonFiniteError, match=r"POSDATA: non-finite value\(s\) in positions"):
        cb.read_posdata()

    raw = bytearray(P.encode_forceready(random_result(2)))
    struct.pack_into("<d", raw, 12, bad)  # energy
    cb.send_bytes(bytes(raw))
    ca.recv_header()
    with pytest.raises(NonFiniteError, match=r"FORCEREADY: non-finite value\(s\) in energy"):
        ca.read_forceready()


def test_non_finite_rejected_on_write():
    res = random_result(2)
    res.forces[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="FORCEREADY.*forces"):
        P.encode_forceready(res)
    pos = random_positions(2)
    pos.cell[0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="POSDATA.*cell"):
        P.encode_posdata(pos)


def test_absurd_lengths(pair):
    ca, cb = pair
    body = struct.pack("<di", 0.0, 1) + np.zeros(3 + 9).tobytes()
    ca.send_bytes(b"FORCEREADY  " + body + struct.pack("<i", P.MAX_EXTRAS_BYTES + 1))
    cb.recv_header()
    with pytest.raises(SizeLimitError, match=r"FORCEREADY: extras length .* exceeds"):
        cb.read_forceready(1)
    ca.send_bytes(b"FORCEREADY  " + body + struct.pack("<i", -5))
    cb.recv_header()
    with pytest.raises(SizeLimitError, match=r"FORCEREADY: negative extras length"):
        cb.read_forceready(1)
    ca.send_bytes(b"INIT        " + struct.pack("<ii", 0, -1))
    cb.recv_header()
    with pytest.raises(SizeLimitError, match=r"INIT: negative init string length"):
        cb.read_init()
    ca.send_bytes(b"INIT        " + struct.pack("<ii", 0, 2**31 - 1))
    cb.recv_header()
    with pytest.raises(SizeLimitError, match=r"INIT: init string length"):
        cb.read_init()


def test_bad_utf8_extras(pair):
    ca, cb = pair
    body = struct.pack("<di", 0.0, 1) + np.zeros(12).tobytes() + struct.pack("<i", 2) + b"\xff\xfe"
    ca.send_bytes(b"FORCEREADY  " + body)
    cb.recv_header()
    with pytest.raises(InvalidMessageError, match="FORCEREADY: extras are not valid UTF-8"):
        cb.read_forceready(1)


def test_truncated_message_and_close(pair):
    ca, cb = pair
    raw = P.encode_posdata(random_positions(3))
    ca.send_bytes(raw[:100])
    ca.sock.shutdown(socket.SHUT_WR)
    cb.recv_header()
    with pytest.raises(ConnectionClosedError, match=r"POSDATA: connection closed") as ei:
        cb.read_posdata()
    assert ei.value.mid_message


def test_clean_close_between_messages(pair):
    ca, cb = pair
    ca.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosedError) as ei:
        cb.recv_header()
    assert not ei.value.mid_message


def test_timeout_does_not_hang(pair):
    ca, cb = pair
    cb.timeout = 0.2
    t0 = time.monotonic()
    with pytest.raises(ProtocolTimeoutError, match="timed out"):
        cb.recv_header()
    assert time.monotonic() - t0 < 2.0
    ca.send_bytes(b"POSDATA     " + b"\0" * 10)
    assert cb.recv_header() == "POSDATA"
    with pytest.raises(ProtocolTimeoutError, match=r"POSDATA: timed out .* 10 of 148 bytes"):
        cb.read_posdata()


# --------------------------------------------------------------------------- #
# roles
# --------------------------------------------------------------------------- #


def harmonic(pos: Positions) -> ForceResult:
    """E = sum |r|^2 / 2 in eV/A^2, with a known virial and JSON extras."""
    r = pos.positions
    return ForceResult(0.5 * (r**2).sum(), -r, virial=r.T @ r, extras='{"n": %d}' % len(r))


@pytest.mark.parametrize("reinit_each_step", [False, True])
@pytest.mark.parametrize("status_after_posdata", [True, False])
def test_client_server_roles(pair, reinit_each_step, status_after_posdata):
    ca, cb = pair
    inits = []
    client = ClientRole(cb, reinit_each_step=reinit_each_step, on_init=inits.append)
    t, box = run_in_thread(client.serve, harmonic)
    server = ServerRole(ca, status_after_posdata=status_after_posdata)
    for step in range(4):
        pos = random_positions(6, seed=step)
        res = server.evaluate(pos, bead=2, init_string=f"step{step}")
        ref = harmonic(pos)
        assert res.energy == pytest.approx(ref.energy, rel=1e-14)
        np.testing.assert_allclose(res.forces, ref.forces, rtol=1e-14)
        np.testing.assert_allclose(res.virial, ref.virial, rtol=1e-13)
        assert res.extras == '{"n": 6}'
    server.send_exit()
    assert join(t, box) == 4
    assert client.exited
    if reinit_each_step:
        assert [i.string for i in inits] == [f"step{k}" for k in range(4)]
    else:
        assert [i.string for i in inits] == ["step0"]
    assert inits[0].bead == 2


def test_client_role_status_sequence(pair):
    """Step by step, as i-PI's non-consolidated mode drives a client."""
    srv, cli = pair
    client = ClientRole(cli, natoms=2)
    t, box = run_in_thread(client.wait_positions)
    role = ServerRole(srv)
    assert role.status() is ClientStatus.NEEDINIT
    role.send_init(0, "")
    assert role.status() is ClientStatus.READY
    role.send_positions(random_positions(2))
    pos = join(t, box)
    assert pos.natoms == 2
    t, box = run_in_thread(client.send_forces, harmonic(pos))
    assert role.status() is ClientStatus.HAVEDATA
    assert role.status() is ClientStatus.HAVEDATA
    res = role.get_forces(2)
    assert join(t, box) is True
    assert res.energy == pytest.approx(harmonic(pos).energy)
    # the client now waits for the next step; a clean close ends it
    t, box = run_in_thread(client.wait_positions)
    assert role.status() is ClientStatus.READY
    srv.close()
    assert join(t, box) is None


def test_client_role_rejects_getforce_without_data(pair):
    srv, cli = pair
    client = ClientRole(cli, need_init=False)
    srv.send_header("GETFORCE")
    with pytest.raises(UnexpectedMessageError, match="GETFORCE received before any POSDATA"):
        client.wait_positions()


def test_client_role_rejects_wrong_natoms(pair):
    srv, cli = pair
    client = ClientRole(cli, natoms=3, need_init=False)
    srv.write_posdata(random_positions(4))
    with pytest.raises(AtomCountError, match="POSDATA: natoms = 4 but 3 expected"):
        client.wait_positions()


def test_client_role_rejects_batched_init(pair):
    srv, cli = pair
    client = ClientRole(cli)
    srv.write_init(0, "batch_size:4")
    with pytest.raises(UnsupportedFeatureError, match="batch_size:4"):
        client.wait_positions()


def test_server_role_rejects_bad_status_reply(pair):
    srv, cli = pair
    role = ServerRole(srv)
    cli.send_header("FORCEREADY")
    with pytest.raises(UnexpectedMessageError, match="FORCEREADY"):
        role.status()


# --------------------------------------------------------------------------- #
# addresses, listen, connect
# --------------------------------------------------------------------------- #


def test_parse_address():
    assert P.parse_address("unix:foo") == P.Address("unix", path="/tmp/ipi_foo")
    assert P.parse_address("unix:/tmp/x.sock") == P.Address("unix", path="/tmp/x.sock")
    assert P.parse_address("unix:./x.sock").path == "./x.sock"
    assert P.parse_address("inet:localhost:31415") == P.Address("inet", host="localhost", port=31415)
    assert P.parse_address("127.0.0.1:5") == P.Address("inet", host="127.0.0.1", port=5)
    assert P.parse_address("inet:[::1]:7") == P.Address("inet", host="::1", port=7)
    assert str(P.parse_address("inet:[::1]:7")) == "inet:[::1]:7"
    assert P.ipi_unix_path("abc") == "/tmp/ipi_abc"
    for bad in ["", "unix:", "localhost", "inet:host:port", "inet:h:70000", "::1:5", "unix:/" + "x" * 200]:
        with pytest.raises(ValueError):
            P.parse_address(bad)


def test_listen_refuses_remote_without_flag():
    with pytest.raises(ValueError, match="non-loopback"):
        P.listen("inet:0.0.0.0:0")
    with pytest.raises(ValueError, match="allow_remote"):
        P.listen("inet:192.0.2.1:0")


def test_inet_listen_connect_nodelay():
    with P.listen("inet:127.0.0.1:0") as lst:
        port = lst.address.port
        assert port > 0
        cli = P.connect(f"127.0.0.1:{port}", timeout=5)
        srv = lst.accept(timeout=5)
        try:
            for c in (cli, srv):
                assert c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            cli.send_header("READY")
            assert srv.recv_header() == "READY"
        finally:
            cli.close()
            srv.close()


def test_unix_listen_permissions_and_stale_file():
    name = unique_socket_name("proto")
    path = P.ipi_unix_path(name)
    # a stale socket file (bound, never listening, closed) is removed first
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    assert os.path.exists(path)
    lst = P.listen(f"unix:{name}")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # a live server is not clobbered
        with pytest.raises(OSError, match="in use"):
            P.listen(f"unix:{name}")
        c = P.connect(f"unix:{path}", timeout=5)
        s = lst.accept(timeout=5)
        c.close()
        s.close()
    finally:
        lst.close()
    assert not os.path.exists(path)


def test_unix_listen_refuses_regular_file(tmp_path):
    p = tmp_path / "notasocket"
    p.write_text("data")
    with pytest.raises(ValueError, match="not a socket"):
        P.listen(f"unix:{p}")
    assert p.read_text() == "data"


def test_connect_retries_until_server_appears():
    name = unique_socket_name("late")
    box = {}

    def late_server():
        time.sleep(0.4)
        with P.listen(f"unix:{name}") as lst:
            conn = lst.accept(timeout=5)
            box["word"] = conn.recv_header()
            conn.close()

    t = threading.Thread(target=late_server, daemon=True)
    t.start()
    conn = P.connect(f"unix:{name}", timeout=5)
    conn.send_header("NEEDINIT")
    conn.close()
    t.join(5)
    assert box["word"] == "NEEDINIT"


def test_connect_gives_up_at_deadline():
    t0 = time.monotonic()
    with pytest.raises(ProtocolTimeoutError, match="could not connect"):
        P.connect(f"unix:{unique_socket_name('nobody')}", timeout=0.3)
    assert time.monotonic() - t0 < 2.0


# --------------------------------------------------------------------------- #
# server role against i-PI's own Python driver (a real force client)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_server_role_against_ipi_driver_py(kind):
    """i-PI's reference driver with its harmonic PES: E = k/2 sum q^2 (a.u.)."""
    import shutil

    exe = shutil.which("i-pi-driver-py")
    assert exe is not None, "i-pi-driver-py (installed with the ipi package) is not on PATH"
    k = 0.37
    if kind == "unix":
        name = unique_socket_name("drvpy")
        lst = P.listen(f"unix:{name}")
        args = ["-u", "-a", name]
    else:
        lst = P.listen("inet:127.0.0.1:0")
        args = ["-a", "127.0.0.1", "-p", str(lst.address.port)]
    proc = subprocess.Popen([sys.executable, exe, *args, "-m", "harmonic", "-o", str(k)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    conn = None
    try:
        conn = lst.accept(timeout=30, io_timeout=10)
        role = ServerRole(conn, compute_timeout=10)
        for step in range(3):
            pos = random_positions(8, seed=10 + step)
            res = role.evaluate(pos)
            q = pos.positions / ase_units.Bohr
            assert res.energy == pytest.approx(0.5 * k * (q**2).sum() * ase_units.Hartree, rel=1e-13)
            np.testing.assert_allclose(res.forces, -k * q * ase_units.Hartree / ase_units.Bohr, rtol=1e-13)
            np.testing.assert_array_equal(res.virial, 0.0)
            assert res.extras == "nada"
        role.send_exit()
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, out
        assert b"Received exit message" in out
    finally:
        if conn is not None:
            conn.close()
        lst.close()
        stop_process(proc)


# --------------------------------------------------------------------------- #
# fuzzing: garbage must give ProtocolError (or a clean end), never hang or crash
# --------------------------------------------------------------------------- #

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _feed(data: bytes, action):
    """Send ``data`` then EOF into a fresh socketpair; run ``action(conn)``."""
    a, b = socket.socketpair()
    ca, cb = Connection(a, timeout=2.0), Connection(b, timeout=2.0)
    try:
        ca.send_bytes(data)
        ca.sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        try:
            return action(cb)
        except ProtocolError:
            return "error"
        finally:
            assert time.monotonic() - t0 < 3.0
    finally:
        ca.close()
        cb.close()


_prefix = st.sampled_from([b"", b"STATUS      ", b"INIT        ", b"POSDATA     ", b"GETFORCE    ",
                           b"FORCEREADY  ", b"EXIT        ", b"STATUS      INIT        "])


@FUZZ
@given(prefix=_prefix, body=st.binary(max_size=600))
def test_fuzz_client_role(prefix, body):
    def act(conn):
        role = ClientRole(conn)
        out = role.wait_positions()
        assert out is None or isinstance(out, Positions)
        if isinstance(out, Positions):
            assert np.all(np.isfinite(out.positions)) and out.natoms > 0
        return out

    _feed(prefix + body, act)


@FUZZ
@given(word=st.sampled_from(["INIT", "POSDATA", "FORCEREADY"]), body=st.binary(max_size=600),
       natoms=st.one_of(st.none(), st.integers(1, 5)))
def test_fuzz_typed_readers(word, body, natoms):
    def act(conn):
        if word == "INIT":
            return conn.read_init()
        if word == "POSDATA":
            return conn.read_posdata(natoms)
        return conn.read_forceready(natoms)

    _feed(body, act)


@FUZZ
@given(which=st.sampled_from(["init", "posdata", "forceready"]), n=st.integers(1, 6),
       data=st.data())
def test_fuzz_truncated_valid_messages(which, n, data):
    if which == "init":
        raw = P.encode_init(1, "x" * n)
    elif which == "posdata":
        raw = P.encode_posdata(random_positions(n))
    else:
        raw = P.encode_forceready(random_result(n))
    cut = data.draw(st.integers(0, len(raw) - 1))

    def act(conn):
        conn.recv_header()
        {"init": conn.read_init, "posdata": conn.read_posdata, "forceready": conn.read_forceready}[which]()
        raise AssertionError("a truncated message was accepted")

    assert _feed(raw[:cut], act) == "error"


@FUZZ
@given(body=st.binary(max_size=300))
def test_fuzz_server_role(body):
    def act(conn):
        role = ServerRole(conn, compute_timeout=2.0)
        return role.evaluate(random_positions(2))

    out = _feed(body, act)
    assert out == "error" or isinstance(out, ForceResult)


def test_extras_dict_is_serialised_as_json(pair):
    ca, cb = pair
    cb.write_forceready(ForceResult(0.0, np.zeros((1, 3)), extras={"committee": [1.0, 2.0]}))
    ca.recv_header()
    import json

    assert json.loads(ca.read_forceready(1).extras) == {"committee": [1.0, 2.0]}
