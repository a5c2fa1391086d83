"""Check the Si property recipes against the Stillinger-Weber reference values.

Runs :func:`studies.si_properties.compute_all` with matscipy's Stillinger-Weber
(built as ``gmetad driver sw`` builds it) and prints a table: value, SW reference
(design values of the GAP-18 framework's recipes), relative deviation, whether it
is within the tolerance (2 %), and the seconds each property took::

    OMP_NUM_THREADS=1 python -m studies.check_si_recipes            # full size
    OMP_NUM_THREADS=1 python -m studies.check_si_recipes --quick    # CI size

Exit status 1 if a property with a reference value is off by more than the
tolerance (full mode; the quick cells carry finite-size errors of a few %).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from .si_properties import SW_REFERENCE, UNITS, compute_all, sw_calculator


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cells, looser forces (CI size)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="relative tolerance against the SW reference (default 0.02)")
    args = parser.parse_args(argv)

    seconds = {}

    def progress(key: str, value: float, dt: float) -> None:
        seconds[key] = dt
        print(f"  {key:26s} {value:12.5f} {UNITS[key]:8s} ({dt:.1f} s)", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    values = compute_all(sw_calculator(), quick=args.quick, progress=progress)
    wall = time.perf_counter() - t0

    failed = []
    print(f"| property | unit | value | SW reference | deviation | within {args.tolerance:.0%} | s |")
    print("|---|---|---|---|---|---|---|")
    for key, value in values.items():
        ref = SW_REFERENCE.get(key)
        if ref is None:
            dev, ok, refs = "", "", "-"
        else:
            rel = (value - ref) / abs(ref)
            dev, refs = f"{rel:+.2%}", f"{ref:g}"
            ok = "yes" if abs(rel) <= args.tolerance else "no"
            if ok == "no":
                failed.append(key)
        print(f"| {key} | {UNITS[key]} | {value:.5g} | {refs} | {dev} | {ok} | {seconds.get(key, 0):.1f} |")
    mode = "quick" if args.quick else "full"
    print(f"\n{mode} mode, wall time {wall:.0f} s; off by more than {args.tolerance:.0%}: "
          f"{', '.join(failed) if failed else 'none'}")
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
