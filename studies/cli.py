"""``gmetad reproduce SYSTEM``: run a whole study, stage by stage, with progress.

    gmetad reproduce si [--quick] [--workdir DIR] [--truth DRIVER] [--settings YAML] [--jobs N]
    gmetad reproduce gete [--quick] [--workdir DIR]

Every stage is cached in the work folder (``studies/pipeline.py``): running the
same command again skips what has finished and resumes an interrupted stage;
changing a setting redoes that stage and those after it. ``--truth`` names the
reference calculator (a ``gmetad driver`` name or ``module:Class``): it drives
the sampling runs and computes the reference properties. ``--settings`` is a
YAML mapping of fields of :class:`studies.si.SiSettings` overriding the full or
quick values. Results: ``WORKDIR/report/si-results.json``, ``si-summary.md`` and
the figures beside them. The GeTe study (:mod:`studies.gete`, CHGNet as the
reference) writes ``WORKDIR/analysis/gete.json``, ``gete.png`` and
``gete-snapshots.png``.
"""
from __future__ import annotations

import sys

STUDIES = ("si", "gete")


def add_arguments(parser) -> None:
    """The arguments of ``gmetad reproduce`` (for biasserver/cli.py)."""
    parser.add_argument("system", choices=STUDIES, help="which study (si: the paper's Fig. 4; gete: Fig. 3)")
    parser.add_argument("--quick", action="store_true", help="the same pipeline at toy size (CI, a few minutes)")
    parser.add_argument("--workdir", help="work folder (default: reproduce-SYSTEM[-quick] in the current folder)")
    parser.add_argument("--truth", default="sw", help="reference calculator, a gmetad driver name (default: sw)")
    parser.add_argument("--settings", help="YAML mapping of study settings to override")
    parser.add_argument("--jobs", type=int, help="processes at once (default 2)")


def main(args) -> int:
    if args.system == "gete":
        return gete_main(args)
    from . import si
    from .pipeline import StageError, single_threaded

    single_threaded()

    overrides = si.load_overrides(args.settings)
    if args.jobs is not None:
        overrides["jobs"] = args.jobs
    settings = si.settings(args.quick, overrides, where=args.settings or "--jobs")
    workdir = args.workdir or f"reproduce-{args.system}{'-quick' if args.quick else ''}"
    try:
        si.run_study(workdir, settings, truth=args.truth)
    except StageError as err:
        print(f"gmetad reproduce: {err}\ngmetad reproduce: finished stages are kept in {workdir}; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    return 0


def gete_main(args) -> int:
    """``gmetad reproduce gete``: the GeTe study (CHGNet reference, fixed settings)."""
    from . import gete
    from .pipeline import StageError

    if args.truth not in ("sw", "chgnet") or args.settings or args.jobs is not None:
        print("gmetad reproduce gete: the GeTe study runs CHGNet with its own settings, one run at a time "
              "(--truth, --settings and --jobs are for si)", file=sys.stderr)
        return 2
    workdir = args.workdir or f"reproduce-gete{'-quick' if args.quick else ''}"
    try:
        gete.reproduce(workdir, args.quick)
    except StageError as err:
        print(f"gmetad reproduce: {err}\ngmetad reproduce: finished stages are kept in {workdir}; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    return 0
