#!/usr/bin/env python
"""Cost of appending one deposition to a hills file: formatting the records before
(Python's repr of every number, one record at a time: the previous HillsWriter) and
now (hillsfile.format_records), the fsync of one deposition, and what
HillsWriter.append costs the caller now (format and write; fsync in its thread).

    python benchmarks/bench_hillsfile.py HILLS [--depositions 20]

HILLS: a hills file with at least that many depositions of 64 adaptive hills (e.g.
benchmarks/long_run.py's exact.hills). Times are medians over the depositions; CPU
time of the calling thread for formatting, wall time for fsync and append. The
files written go to a temporary directory on the file system of TMPDIR. Checked
(exit status 1 otherwise): the file holds that many depositions, both formats
give the same numbers bit for bit, and the file HillsWriter wrote reads back to
the records it was given, bit for bit.

    python benchmarks/bench_hillsfile.py --quick [HILLS]     # CI

--quick: 5 depositions; without HILLS, those of a 100-step exact run of
benchmarks/long_run.py (500 K) made in the temporary directory.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from biasserver import hillsfile  # noqa: E402
from biasserver.hillsfile import HillRecord  # noqa: E402

QUICK_DEPOSITIONS = 5


def format_before(record) -> str:
    """The previous version's format_record (repr of each number as a numpy scalar)."""
    metric = np.asarray(record.metric)
    values = metric[np.triu_indices(len(metric))] if metric.ndim == 2 else metric.reshape(1)
    numbers = " ".join(repr(float(x)) for x in np.concatenate([record.centre, values]))
    return f"{record.id} {record.step} {record.element} {float(record.height)!r} {numbers}\n"


def numbers(text: bytes | str) -> bytes:
    """The numbers of hill records' lines (every field but the element) as float64 bytes."""
    lines = (text.decode() if isinstance(text, bytes) else text).splitlines()
    return np.array([float(w) for line in lines for k, w in enumerate(line.split()) if k != 2]).tobytes()


def identical(a: list[HillRecord], b: list[HillRecord]) -> bool:
    """Hill records equal bit for bit: ids, steps, elements, and the bytes of every float."""
    def key(r: HillRecord):
        return (r.id, r.step, r.element, np.float64(r.height).tobytes(),
                np.asarray(r.centre, dtype=np.float64).tobytes(), np.asarray(r.metric, dtype=np.float64).tobytes())
    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))


def measure(path: str, depositions: int, per_deposition: int, tmp: str) -> tuple[dict, float, list[str]]:
    """Times (s) of each of the first ``depositions`` depositions in the hills file
    ``path``, in lists by part; the kB of one deposition's records; what went wrong
    (empty if nothing did). Files are written in the folder ``tmp``."""
    n = per_deposition
    with open(path) as handle:
        head, lines = [], []
        for line in handle:
            if line.startswith("#"):
                head.append(line)
            elif len(lines) < n * depositions:
                lines.append(line)
            else:
                break
    sample = os.path.join(tmp, "sample")
    with open(sample, "w") as handle:
        handle.writelines(head + lines)
    records = hillsfile.read(sample).records
    batches = [records[n * k: n * (k + 1)] for k in range(len(records) // n)]
    found = [] if len(batches) == depositions else \
        [f"{path}: {len(records)} records, {len(batches)} depositions of {n}, not {depositions}"]
    times = {"before": [], "now": [], "fsync": [], "append": []}
    with open(os.path.join(tmp, "fsynced"), "ab") as handle:
        for batch in batches:
            c = time.thread_time()
            text = "".join(format_before(r) for r in batch)
            times["before"].append(time.thread_time() - c)
            c = time.thread_time()
            data = hillsfile.format_records(batch)
            times["now"].append(time.thread_time() - c)
            if numbers(data) != numbers(text):
                found.append(f"step {batch[0].step}: the two formats give different numbers")
            handle.write(data)
            handle.flush()
            t = time.perf_counter()
            os.fsync(handle.fileno())
            times["fsync"].append(time.perf_counter() - t)
    appended = os.path.join(tmp, "appended")
    writer = hillsfile.HillsWriter(appended, "".join(head))
    for batch in batches:
        t = time.perf_counter()
        writer.append(batch)
        times["append"].append(time.perf_counter() - t)
    writer.close()
    if not identical(hillsfile.read(appended).records, records):
        found.append("the file HillsWriter wrote does not read back to its records bit for bit")
    return times, len(data) / 1e3 if batches else 0.0, found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hills", nargs="?", help="a hills file (optional with --quick)")
    parser.add_argument("--depositions", type=int, default=None,
                        help=f"depositions timed (default 20; {QUICK_DEPOSITIONS} with --quick)")
    parser.add_argument("--per-deposition", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a few depositions, of a short run made here if no HILLS")
    args = parser.parse_args(argv)
    depositions = args.depositions or (QUICK_DEPOSITIONS if args.quick else 20)
    if args.hills is None and not args.quick:
        parser.error("give a hills file (or --quick)")
    n = args.per_deposition
    with tempfile.TemporaryDirectory() as tmp:
        path = args.hills
        if path is None:
            sys.path.insert(0, HERE)
            import long_run
            steps = str(long_run.STRIDE * depositions)
            long_run.main(["run", "exact", "--steps", steps, "--window", steps, "--temperature", "500", "--out", tmp])
            path = os.path.join(tmp, "exact.hills")
            print()
        times, kilobytes, found = measure(path, depositions, n, tmp)

    def ms(x):
        return f"{statistics.median(x) * 1e3:.3g}" if x else "-"

    print(f"{len(times['now'])} depositions of {n} records ({kilobytes:.0f} kB each), load average "
          f"{os.getloadavg()[0]:.1f}:")
    print()
    print("| format before, CPU ms | format now, CPU ms | fsync of one deposition, wall ms (median / largest) "
          "| HillsWriter.append now, wall ms |")
    print("|---|---|---|---|")
    print(f"| {ms(times['before'])} | {ms(times['now'])} | {ms(times['fsync'])} / "
          f"{max(times['fsync'], default=0) * 1e3:.3g} | {ms(times['append'])} |")
    for message in found:
        print(f"bench_hillsfile.py: {message}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
