#!/usr/bin/env python
"""Cost of appending one deposition to a hills file: formatting the records before
(Python's repr of every number, one record at a time: the previous HillsWriter) and
now (hillsfile.format_records), the fsync of one deposition, and what
HillsWriter.append costs the caller now (format and write; fsync in its thread).

    python benchmarks/bench_hillsfile.py HILLS [--depositions 20]

HILLS: a hills file with at least that many depositions of 64 adaptive hills (e.g.
benchmarks/long_run.py's exact.hills). Times are medians over the depositions; CPU
time of the calling thread for formatting, wall time for fsync and append. The
files written go to a temporary directory on the file system of TMPDIR.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from biasserver import hillsfile  # noqa: E402


def format_before(record) -> str:
    """The previous version's format_record (repr of each number as a numpy scalar)."""
    metric = np.asarray(record.metric)
    values = metric[np.triu_indices(len(metric))] if metric.ndim == 2 else metric.reshape(1)
    numbers = " ".join(repr(float(x)) for x in np.concatenate([record.centre, values]))
    return f"{record.id} {record.step} {record.element} {float(record.height)!r} {numbers}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hills")
    parser.add_argument("--depositions", type=int, default=20)
    parser.add_argument("--per-deposition", type=int, default=64)
    args = parser.parse_args(argv)
    n = args.per_deposition
    with open(args.hills) as handle:
        head, lines = [], []
        for line in handle:
            if line.startswith("#"):
                head.append(line)
            elif len(lines) < n * args.depositions:
                lines.append(line)
            else:
                break
    tmp = tempfile.mkdtemp()
    sample = os.path.join(tmp, "sample")
    with open(sample, "w") as handle:
        handle.writelines(head + lines)
    records = hillsfile.read(sample).records
    batches = [records[n * k: n * (k + 1)] for k in range(len(records) // n)]
    before, now, fsync, append = [], [], [], []
    with open(os.path.join(tmp, "fsynced"), "ab") as handle:
        for batch in batches:
            c = time.thread_time()
            text = "".join(format_before(r) for r in batch)
            before.append(time.thread_time() - c)
            c = time.thread_time()
            data = hillsfile.format_records(batch)
            now.append(time.thread_time() - c)
            # the same numbers, bit for bit
            assert [float(w) for w in data.split()[3::1] if w[:1] != b"S"] == \
                [float(w) for w in text.split()[3::1] if w[:1] != "S"]
            handle.write(data)
            handle.flush()
            t = time.perf_counter()
            os.fsync(handle.fileno())
            fsync.append(time.perf_counter() - t)
    writer = hillsfile.HillsWriter(os.path.join(tmp, "appended"), "".join(head))
    for batch in batches:
        t = time.perf_counter()
        writer.append(batch)
        append.append(time.perf_counter() - t)
    writer.close()

    def ms(x):
        return f"{statistics.median(x) * 1e3:.3g}"

    print(f"{len(batches)} depositions of {n} records ({len(data) / 1e3:.0f} kB each), load average "
          f"{os.getloadavg()[0]:.1f}:")
    print()
    print("| format before, CPU ms | format now, CPU ms | fsync of one deposition, wall ms (median / largest) "
          "| HillsWriter.append now, wall ms |")
    print("|---|---|---|---|")
    print(f"| {ms(before)} | {ms(now)} | {ms(fsync)} / {max(fsync) * 1e3:.3g} | {ms(append)} |")


if __name__ == "__main__":
    main()
