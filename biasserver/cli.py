"""The ``gmetad`` command line.

    gmetad serve CONFIG          run the bias server of a YAML run configuration
    gmetad driver NAME ...       run an ASE calculator as an i-PI force client
    gmetad run DIR               i-PI + server + driver for an example directory
    gmetad run DIR --resume      continue its stopped run from i-PI's newest checkpoint
    gmetad hills FILE            summarise a hills file
    gmetad select FRAMES... -o F pick a training subset from recorded frames (files, run folders)
    gmetad train FRAMES... -o M  train a neural-network potential (package nnp)
    gmetad test MODEL FRAMES...  a potential's errors on reference frames
    gmetad reproduce si          the Si study of the paper's Fig. 4 (package studies)
    gmetad reproduce gete        the GeTe study of the paper's Fig. 3 (CHGNet reference)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import numpy as np

log = logging.getLogger("gmetad")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)


def build_server(config, bias_enabled: bool | None = None, walkers=None):
    """The BiasServer a validated RunConfig describes; ``walkers``: the MPI group of
    a walkers job (biasserver.walkers), None for a single walker."""
    from .beads import nbeads_of
    from .config import keep_aside, read_structure
    from .checkpoint import restart_step as restart_step_of
    from .recorder import FrameRecorder
    from .server import BiasServer
    from .walkers import RunawayGuard, check_addresses, frames_path, for_walker, shared_bias

    rank, size = (0, 1) if walkers is None else (walkers.rank, walkers.size)
    check_addresses(config, size)
    server = config.server
    server.ipi, server.listen = for_walker(server.ipi, rank), for_walker(server.listen, rank)
    server.ipi_restart = for_walker(server.ipi_restart, rank)
    config.recorder.path = frames_path(config.recorder.path, rank, size)
    template = read_structure(config.structure, config.path)
    enabled = config.bias.enabled if bias_enabled is None else bias_enabled
    # i-PI's step in the checkpoint it restarts from (a CheckpointError before anything starts)
    restart_step = None if config.server.ipi_restart is None else restart_step_of(config.server.ipi_restart)
    nbeads = None if config.server.ipi_restart is None else nbeads_of(config.server.ipi_restart)
    bias = config.make_bias(enabled) if walkers is None else shared_bias(config, walkers, enabled)
    proxy = config.server.mode == "proxy"
    recorder = None
    if proxy and config.recorder.path:

        if os.path.exists(config.recorder.path) and not config.bias.restart:
            keep_aside(config.recorder.path)
        recorder = FrameRecorder(config.recorder.path, template.get_chemical_symbols(), template.pbc,
                                 fsync=config.recorder.fsync)
    return BiasServer(bias, template, config.server.ipi,
                      listen_address=config.server.listen if proxy else None, recorder=recorder,
                      allow_remote=config.server.allow_remote, compute_timeout=config.server.timeout,
                      restart_step=restart_step, nbeads=nbeads, walkers=walkers,
                      guard=RunawayGuard(config.bias.runaway_energy, config.bias.runaway_force))


def cmd_serve(args) -> int:
    # The server shares the machine with i-PI and the force engine: one kernel
    # thread unless the user asks for more (read when the C library loads).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGTERM (gmetad run's stop, a batch system) ends the server between two
    # bytecodes, never inside a frame or hill write, and still closes the files
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from .config import load
    from .walkers import WalkerGroup
    walkers = WalkerGroup.from_environment()   # mpirun -n N gmetad serve: N walkers, one bias
    if walkers is not None:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(
                f"%(asctime)s walker {walkers.rank} %(name)s %(levelname)s: %(message)s"))
    try:
        config = load(args.config)
        if args.mode:
            config.server.mode = args.mode
        server = build_server(config, bias_enabled=False if args.no_bias else None, walkers=walkers)
        steps = server.serve()
    except Exception as err:
        if walkers is None:
            raise
        # one walker's error ends the job: MPI_Abort names this rank
        log.error("%s: %s; ending all walkers", type(err).__name__, err)
        logging.shutdown()
        walkers.abort(1)
    log.info("served %d steps (%d force requests)", steps // (server.steps.nbeads or 1), steps)
    return 0


def cmd_driver(args) -> int:
    from drivers.client import main as driver_main

    kwargs = args.kwargs
    if args.model:       # gmetad driver nnp --model model.pt
        kwargs = json.dumps({**json.loads(kwargs), "model": os.path.abspath(args.model)})
    argv = ["--calculator", args.calculator, "--structure", args.structure, "--address", args.address,
            "--kwargs", kwargs, "--connect-timeout", str(args.connect_timeout)]
    return driver_main(argv + (["--reinit-each-step"] if args.reinit_each_step else []))


def cmd_hills(args) -> int:
    from .hillsfile import read
    content = read(args.file)
    print(f"hills file {args.file}")
    bias = content.bias
    print(f"  covariance {bias.get('covariance')} (jacobian {bias.get('jacobian', 'folded')}), height {bias.get('height')} eV, width {bias.get('width')}, "
          f"stride {bias.get('stride')}, well-tempered {bias.get('well_tempered')}, "
          f"compression {bias.get('compression')}")
    latest = {}
    for r in content.records:
        latest[(r.element, r.id)] = r
    for element, dim in content.dimensions.items():
        hills = [r for (e, _), r in latest.items() if e == element]
        if not hills:
            print(f"  {element}: no hills (D = {dim})")
            continue
        heights = np.array([r.height for r in hills])
        steps = np.array([r.step for r in hills])
        print(f"  {element}: {len(hills)} hills in D = {dim}, heights {heights.min():.3g}..{heights.max():.3g} eV "
              f"(sum {heights.sum():.4g} eV), steps {steps.min()}..{steps.max()}")
    merges = len(content.records) - len(latest)
    print(f"  {len(content.records)} records, {merges} merges")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gmetad", description="G-metaD bias server for i-PI: metadynamics on atom-centred symmetry functions")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the bias server of a YAML run configuration")
    p.add_argument("config")
    p.add_argument("--mode", choices=("proxy", "bias"), help="override server.mode")
    p.add_argument("--no-bias", action="store_true", help="relay and record without biasing (plain MD)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("driver", help="run an ASE calculator as an i-PI force client")
    p.add_argument("calculator", help="emt, sw, tersoff, eam, nnp, chgnet, or package.module:Class")
    p.add_argument("--structure", "-s", required=True, help="template structure (symbols, pbc)")
    p.add_argument("--address", "-a", required=True, help="unix:NAME, unix:/path or inet:HOST:PORT")
    p.add_argument("--kwargs", default="{}", help="JSON object of calculator keyword arguments")
    p.add_argument("--model", help="model file of 'gmetad train' (for the nnp calculator)")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--reinit-each-step", action="store_true")
    p.set_defaults(func=cmd_driver)

    p = sub.add_parser("run", help="i-PI + bias server + driver for an example directory")
    p.add_argument("directory")
    p.add_argument("--steps", type=int, help="MD steps per run (default: the example's)")
    p.add_argument("--only", choices=("gmetad", "plain"), help="run only the biased or the plain variant")
    p.add_argument("--output", help="output folder (default: DIR/output)")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped or killed run in the output folder from i-PI's newest "
                        "checkpoint (frames and hills after it are set aside)")
    p.set_defaults(func=lambda a: __import__("biasserver.runner", fromlist=["main"]).main(a))

    p = sub.add_parser("hills", help="summarise a hills file")
    p.add_argument("file")
    p.set_defaults(func=cmd_hills)

    p = sub.add_parser("select", help="pick a training subset from recorded frames")
    p.add_argument("frames", nargs="+", help="extxyz files written by the recorder (e.g. one per walker), "
                                             "or run folders (a walkers run's: its walker-<r>/frames.extxyz)")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--stride", type=int, default=1, help="keep every n-th frame of each file first")
    p.add_argument("--fps", type=int, help="then keep this many by farthest-point sampling in G space")
    p.add_argument("--config", help="run configuration giving the symmetry functions (default: the "
                                    "method's default set for the frames' elements)")
    p.set_defaults(func=lambda a: __import__("biasserver.select", fromlist=["main"]).main(a))

    p = sub.add_parser("train", help="train a neural-network potential on extxyz frames")
    p.add_argument("frames", nargs="+", help="extxyz files with energies and forces")
    p.add_argument("--output", "-o", required=True, help="model file to write (e.g. model.pt)")
    p.add_argument("--config", help="training YAML (see nnp/config.py; default: built-in defaults)")
    p.add_argument("--committee", type=int, help="number of networks (overrides the config)")
    p.add_argument("--bootstrap", action="store_true", help="members train on bootstrap samples")
    p.add_argument("--epochs", type=int, help="maximum epochs (overrides the config)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--threads", type=int, help="torch threads (overrides the config)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-plot", action="store_true", help="no loss-curve PNG")
    p.set_defaults(func=lambda a: __import__("nnp.cli", fromlist=["train_main"]).train_main(a))

    p = sub.add_parser("test", help="a potential's errors on reference frames")
    p.add_argument("model", help="model file of 'gmetad train'")
    p.add_argument("frames", nargs="+", help="extxyz files with energies and forces")
    p.add_argument("--output", "-o", help="prefix of PREFIX.json and the plots (default: MODEL.test)")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    p.add_argument("--no-plot", action="store_true", help="JSON only")
    p.set_defaults(func=lambda a: __import__("nnp.cli", fromlist=["test_main"]).test_main(a))

    p = sub.add_parser("reproduce", help="run a study of the paper end to end (cached stages)")
    __import__("studies.cli", fromlist=["add_arguments"]).add_arguments(p)
    p.set_defaults(func=lambda a: __import__("studies.cli", fromlist=["main"]).main(a))

    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 1




if __name__ == "__main__":
    sys.exit(main())
