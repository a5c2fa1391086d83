"""The hills file's writer: numbers that load back bit for bit, whole lines after a
killed writer, nothing lost that a returned append had written, and the background
fsync."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from biasserver import hillsfile
from biasserver.hillsfile import HillRecord

#: values whose shortest round-trip form is awkward: 17 digits, exponents, subnormals
AWKWARD = [0.1, 1 / 3, -2 / 3, 1e-5, 1.1296799322780743e-05, 100.0, 1e16, 1.7976931348623157e308,
           5e-324, 2.2250738585072014e-308, -0.0, 0.0, 123456789012345.67, 9007199254740993.0,
           0.30000000000000004, 1e22, 1e23, -7.320021768925843e-07]


def header(dimensions, covariance="adaptive"):
    return hillsfile.header({"elements": list(dimensions), "tables": {}}, {"covariance": covariance}, dimensions)


def random_records(rng, n, dim=6, element="Si", start=0):
    records = []
    for k in range(n):
        a = rng.standard_normal((dim, dim)) * rng.lognormal(0.0, 8.0)
        metric = a @ a.T
        metric.flat[:: dim + 1][: min(dim, 3)] = rng.choice(AWKWARD, size=min(dim, 3))
        metric = 0.5 * (metric + metric.T)
        centre = rng.standard_normal(dim) * rng.lognormal(0.0, 6.0, size=dim)
        centre[: min(dim, 4)] = rng.choice(AWKWARD, size=min(dim, 4))
        records.append(HillRecord(start + k, 20 * (k + 1), element, float(rng.lognormal(-7.0, 2.0)), centre, metric))
    return records


def same_bits(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


def assert_same_records(read_back, written):
    assert len(read_back) == len(written)
    for r, w in zip(read_back, written):
        assert (r.id, r.step, r.element) == (w.id, w.step, w.element)
        assert same_bits(r.height, w.height) and same_bits(r.centre, w.centre)
        assert same_bits(r.metric, w.metric)


def test_numbers_are_shortest_round_trip_and_load_bit_for_bit(tmp_path):
    rng = np.random.default_rng(3)
    records = random_records(rng, 40)
    path = tmp_path / "HILLS"
    writer = hillsfile.HillsWriter(path, header({"Si": 6}))
    writer.append(records[:25])
    writer.append(records[25:])
    writer.close()
    assert_same_records(hillsfile.read(path).records, records)
    # every number has the digits of Python's repr (the shortest that round-trips)
    line = path.read_text().splitlines()[-1].split()
    values = [records[-1].height, *records[-1].centre, *records[-1].metric[np.triu_indices(6)]]
    for word, value in zip(line[3:], values):
        assert float(word) == value or (value == 0 and float(word) == 0)
        digits = lambda text: text.lstrip("-").split("e")[0].replace(".", "").strip("0")  # noqa: E731
        assert digits(word) == digits(repr(float(value))), (word, value)
    # the whole-file writer gives the same lines
    saved = tmp_path / "SAVED"
    hillsfile.write(saved, header({"Si": 6}), records)
    assert saved.read_text() == path.read_text()


def test_isotropic_and_mixed_dimensions_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    records = []
    for k in range(12):
        element, dim = ("Pt", 3) if k % 3 else ("H", 5)
        records.append(HillRecord(k, k, element, float(rng.choice(AWKWARD[:10])),
                                  rng.standard_normal(dim) * 1e-3, float(rng.lognormal(0.0, 5.0))))
    path = tmp_path / "HILLS"
    writer = hillsfile.HillsWriter(path, header({"Pt": 3, "H": 5}, covariance="isotropic"))
    writer.append(records)
    writer.close()
    assert_same_records(hillsfile.read(path).records, records)


def test_killed_writer_leaves_whole_lines_and_loses_no_returned_append(tmp_path):
    """SIGKILL a process appending depositions as fast as it can: the file reads back
    as whole records (an interrupted last line is ignored and cut by the next writer),
    and every deposition whose append had returned before the kill is there, bit for bit."""
    path = tmp_path / "HILLS"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from biasserver import hillsfile
        from test_hillsfile import header, random_records
        rng = np.random.default_rng(7)
        writer = hillsfile.HillsWriter({str(path)!r}, header({{"Si": 26}}))
        k = 0
        while True:
            writer.append(random_records(rng, 64, dim=26, start=64 * k))
            k += 1
            print(k, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        returned = 0
        while returned < 5:
            returned = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rng = np.random.default_rng(7)
    expected = []
    for k in range(returned + 2):
        expected += random_records(rng, 64, dim=26, start=64 * k)
    text = path.read_bytes()
    if not text.endswith(b"\n"):
        with pytest.warns(UserWarning, match="incomplete last line"):
            records = hillsfile.read(path).records
    else:
        records = hillsfile.read(path).records
    assert len(records) >= 64 * returned
    assert_same_records(records, expected[: len(records)])
    # a new writer cuts an interrupted line and appends whole lines after it
    writer = hillsfile.HillsWriter(path, header({"Si": 26}))
    more = random_records(np.random.default_rng(8), 3, dim=26, start=len(records))
    writer.append(more)
    writer.close()
    assert_same_records(hillsfile.read(path).records, records + more)


def test_close_waits_for_an_fsync_after_the_last_write(tmp_path, monkeypatch):
    events = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(hillsfile.os, "write", lambda fd, data: events.append("write") or real_write(fd, data))
    monkeypatch.setattr(hillsfile.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    writer = hillsfile.HillsWriter(tmp_path / "HILLS", header({"Si": 6}))
    rng = np.random.default_rng(1)
    for k in range(20):
        writer.append(random_records(rng, 4, start=4 * k))
    writer.close()
    assert events[-1] == "fsync" and events.count("write") == 21
    assert not writer._syncer._thread.is_alive()
    writer.close()    # a second close does nothing
