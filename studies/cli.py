"""``gmetad reproduce SYSTEM``: run a whole study, stage by stage, with progress.

    gmetad reproduce si [--quick] [--workdir DIR] [--truth DRIVER] [--settings YAML] [--jobs N]
    gmetad reproduce gete [--quick] [--workdir DIR]
    gmetad reproduce pt111-h [--quick] [--workdir DIR] [--truth DRIVER] [--settings YAML] [--jobs N]

Every stage is cached in the work folder (``studies/pipeline.py``): running the
same command again skips what has finished and resumes an interrupted stage;
changing a setting redoes that stage and those after it. ``--truth`` names the
reference calculator (a ``gmetad driver`` name or ``module:Class``): it drives
the sampling runs and computes the reference properties. ``--settings`` is a
YAML mapping of fields of :class:`studies.si.SiSettings` overriding the full or
quick values. Results: ``WORKDIR/report/si-results.json``, ``si-summary.md`` and
the figures beside them. The GeTe study (:mod:`studies.gete`, CHGNet as the
reference) writes ``WORKDIR/analysis/gete.json``, ``gete.png`` and
``gete-snapshots.png``. The H on Pt(111) study (:mod:`studies.pt111_h`, EMT as
the reference, ``--settings``: fields of :class:`studies.pt111_h.PtHSettings`)
writes ``WORKDIR/report/pt111-h-results.json``, ``pt111-h-summary.md``, the
figures and ``WORKDIR/sites/pt111-h-sites.json``.
"""
from __future__ import annotations

import sys

STUDIES = ("si", "gete", "pt111-h")


def add_arguments(parser) -> None:
    """The arguments of ``gmetad reproduce`` (for biasserver/cli.py)."""
    parser.add_argument("system", choices=STUDIES, help="which study (si: the paper's Fig. 4; gete: Fig. 3; "
                        "pt111-h: Figs. 1 and 2, H on Pt(111))")
    parser.add_argument("--quick", action="store_true", help="the same pipeline at toy size (CI, a few minutes)")
    parser.add_argument("--workdir", help="work folder (default: reproduce-SYSTEM[-quick] in the current folder)")
    parser.add_argument("--truth", help="reference calculator, a gmetad driver name (default: sw for si, "
                        "chgnet for gete, emt for pt111-h)")
    parser.add_argument("--settings", help="YAML mapping of study settings to override")
    parser.add_argument("--jobs", type=int, help="processes at once (default 2)")


def main(args) -> int:
    if args.system == "gete":
        return gete_main(args)
    if args.system == "pt111-h":
        from . import pt111_h
        return _settings_study(args, pt111_h, default_truth="emt")
    from . import si
    return _settings_study(args, si, default_truth="sw")


def _settings_study(args, study, default_truth: str) -> int:
    """A study with ``settings(quick, overrides, where)`` and ``run_study(workdir, settings, truth)``
    (Si, Pt(111)-H): overrides from ``--settings`` and ``--jobs``, errors of a stage reported."""
    from .pipeline import load_overrides, single_threaded

    single_threaded()
    overrides = load_overrides(args.settings)
    if args.jobs is not None:
        overrides["jobs"] = args.jobs
    settings = study.settings(args.quick, overrides, where=args.settings or "--jobs")
    workdir = _workdir(args)
    return _staged(lambda: study.run_study(workdir, settings, truth=args.truth or default_truth), workdir)


def gete_main(args) -> int:
    """``gmetad reproduce gete``: the GeTe study (CHGNet reference, fixed settings)."""
    from . import gete

    if args.truth not in (None, "sw", "chgnet") or args.settings or args.jobs is not None:
        print("gmetad reproduce gete: the GeTe study runs CHGNet with its own settings, one run at a time "
              "(--truth, --settings and --jobs are for si)", file=sys.stderr)
        return 2
    workdir = _workdir(args)
    return _staged(lambda: gete.reproduce(workdir, args.quick), workdir)


def _workdir(args) -> str:
    return args.workdir or f"reproduce-{args.system}{'-quick' if args.quick else ''}"


def _staged(run, workdir: str) -> int:
    """Run a study; a failed stage is reported with where the finished stages are kept (exit 1)."""
    from .pipeline import StageError

    try:
        run()
    except StageError as err:
        print(f"gmetad reproduce: {err}\ngmetad reproduce: finished stages are kept in {workdir}; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    return 0
