"""``gmetad train`` and ``gmetad test`` (argument parsing lives in biasserver/cli.py)."""
from __future__ import annotations

import os
import sys


def train_main(args) -> int:
    """gmetad train FRAMES... -o MODEL [--config YAML] [--committee K] [--bootstrap] [--epochs N]
    [--seed S] [--fresh]"""
    from .config import load_config
    from .train import output_paths, train

    config = load_config(args.config, committee=args.committee, epochs=args.epochs, seed=args.seed,
                         bootstrap=True if args.bootstrap else None, threads=args.threads)
    model = train(args.frames, args.output, config, fresh=args.fresh, plot=not args.no_plot)
    out = output_paths(args.output)
    print(f"wrote {out['model']} ({model.describe()}), log {out['log']}"
          + ("" if args.no_plot else f", loss curve {out['plot']}"), file=sys.stderr)
    return 0


def test_main(args) -> int:
    """gmetad test MODEL FRAMES... [-o PREFIX] [--energy-key K] [--forces-key K]"""
    from .evaluate import evaluate, print_summary, write_report

    summary, raw = evaluate(args.model, args.frames, args.energy_key, args.forces_key)
    prefix = args.output or os.path.splitext(args.model)[0] + ".test"
    paths = write_report(summary, raw, prefix, plots=not args.no_plot)
    print_summary(summary)
    print(f"wrote {', '.join(paths.values())}", file=sys.stderr)
    return 0
