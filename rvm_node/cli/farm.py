"""``rvm-node farm``: many shots over several nodes (``run``), or a farm job bundle (``bundle``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rvm_node.cli import common, options
from rvm_node.credentials import read_ca
from rvm_node.errors import InvalidInputError, RvmNodeError

__all__ = ["add_parser", "run"]


def _add_farm_shots(parser: argparse.ArgumentParser) -> None:
    """The options of ``farm run`` and ``farm bundle`` that make the shots and reach the pool."""
    parser.add_argument("targets", nargs="+", help="a shots.toml file, or input files/patterns")
    options.add_pool_options(parser)
    for name in options.SHOT_OPTIONS:  # not given: the shot list's value, else the converter's default
        options.add_shot_option(parser, name, default=None)
    parser.add_argument("--retries", type=int, default=3, help="attempts per shot after the first")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="frames between state checkpoints")
    parser.add_argument(
        "--wait-for-node", type=float, default=60.0, help="seconds a shot waits for a free node"
    )
    parser.add_argument(
        "--name", default=None, help="the shot's name, with one input (default: its file stem)"
    )
    parser.add_argument(
        "--shot-settings",
        default=None,
        help='shot-list keys as a JSON object, e.g. \'{"frames": "1001-1100"}\' (what job bundles pass)',
    )
    parser.add_argument("--split", type=int, default=1, help="run each shot as N segments in parallel")
    parser.add_argument(
        "--preroll",
        type=int,
        default=None,
        help="frames each split segment runs before writing (default: 45)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    farm = sub.add_parser(
        "farm",
        help="spread many shots over a pool of render nodes",
        description="Many shots over a pool of render nodes: run them from here with failover, or write a "
        "job bundle for a render farm manager.",
        epilog="examples:\n"
        "  rvm-node farm run shots.toml --nodes gpu01:50051,gpu02:50051\n"
        "  rvm-node farm run plates/*.mov --nodes nodes.toml --output-alpha 'mattes/{shot}/{shot}.####.exr'\n"
        "  rvm-node farm bundle shots.toml --nodes nodes.toml --shared-root /mnt/shows --output /mnt/shows/jobs/mattes\n",
    )
    actions = farm.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        help="matte a shot list (TOML) or inputs on the pool, with failover",
        description="Matte a shot list (TOML) or input files on a pool of nodes: each shot on a free node, "
        "moved with its checkpoint to another when its node fails; a rerun redoes nothing that is written.",
        epilog="examples:\n  rvm-node farm run shots.toml --nodes gpu01:50051,gpu02:50051\n"
        "  rvm-node farm run plates/a.mov plates/b.mov --nodes nodes.toml --output-alpha 'mattes/{shot}/{shot}.####.exr'\n",
    )
    _add_farm_shots(run)
    options.add_stall_timeout(run)
    run.add_argument(
        "--require-same-backend",
        action="store_true",
        help="refuse a pool whose nodes run different backends or precisions, for bit-identical failover",
    )
    run.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    progress = run.add_mutually_exclusive_group()
    progress.add_argument("--progress-json", action="store_true", help="one JSON object per line on stdout")
    progress.add_argument(
        "--progress-openjd",
        action="store_true",
        help="openjd_progress/openjd_status lines on stdout, for an Open Job Description task",
    )
    run.add_argument(
        "--segment", type=int, default=None, help="with --split N: run only segment K (1..N) of each shot"
    )
    bundle = actions.add_parser(
        "bundle",
        help="write the job of farm run for a render farm manager (Open Job Description or OpenCue)",
        description="Write a job that a farm manager runs: one task per shot (or per segment with --split), "
        "each running rvm-node farm run for its shot on the pool, resuming when retried.",
        epilog="examples:\n  rvm-node farm bundle shots.toml --nodes nodes.toml --output jobs/mattes\n"
        "  rvm-node farm bundle shots.toml --nodes nodes.toml --format opencue --output jobs/mattes\n",
    )
    _add_farm_shots(bundle)
    bundle.add_argument("--output", type=Path, required=True, help="the bundle folder to write")
    bundle.add_argument(
        "--format",
        default="openjd",
        choices=["openjd", "opencue"],  # rvm_node.farm.submit.FORMATS (the farm is imported on use)
        help="openjd (Open Job Description: Deadline Cloud, openjd run) or opencue",
    )
    bundle.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    bundle.add_argument("--job-name", default=None, help="default: rvm-node mattes and the first shot")
    bundle.add_argument(
        "--rvm-node",
        default="rvm-node",
        help="the rvm-node command on the workers (default: rvm-node on PATH)",
    )
    bundle.add_argument(
        "--shared-root",
        type=Path,
        action="append",
        default=[],
        help="storage the workers mount; every input and output must lie under one (repeatable)",
    )
    bundle.add_argument("--submit-command", default=None, help="run this after writing, {bundle} the folder")
    bundle.add_argument(
        "--cuebot", default=None, help="opencue: submit the spec to this Cuebot (HOST[:PORT])"
    )
    bundle.add_argument("--show", default="rvm", help="opencue: the show the job belongs to")


def _farm_shots(args: argparse.Namespace, split_now: bool) -> list[Any]:
    """The shots ``farm run``/``farm bundle`` were given; with ``split_now``, split into segments."""
    from rvm_node.farm import DEFAULT_PREROLL, load_shot_list, make_shots, split_shot
    from rvm_node.farm.shots import parse_shot_settings
    from rvm_node.shot_settings import SETTING_KEYS

    options = {k: getattr(args, k) for k in SETTING_KEYS if getattr(args, k, None) is not None}
    if args.name is not None:
        options["name"] = args.name
    if args.shot_settings:
        for key, value in parse_shot_settings(args.shot_settings, "--shot-settings").items():
            if key in options and options[key] != value:
                raise InvalidInputError(f"--shot-settings: {key} is also given as an option")
            options[key] = value
    if len(args.targets) == 1 and args.targets[0].endswith(".toml"):
        if options:
            raise InvalidInputError(
                f"farm {args.action}: with a shot list, put the settings in its [defaults] table"
            )
        shots = load_shot_list(Path(args.targets[0]))
    else:
        if args.name is not None and len(args.targets) > 1:
            raise InvalidInputError(f"--name names one shot, but {len(args.targets)} inputs were given")
        shots = make_shots(args.targets, options)
    segment = getattr(args, "segment", None)
    if segment is not None and not 1 <= segment <= args.split:
        raise InvalidInputError(f"--segment: expected 1 to {args.split} (the --split count), got {segment}")
    if split_now and (args.split != 1 or args.preroll is not None):
        preroll = DEFAULT_PREROLL if args.preroll is None else args.preroll
        segments = [split_shot(shot, args.split, preroll) for shot in shots]
        if segment is not None:
            return [parts[segment - 1] for parts in segments if len(parts) >= segment]
        return [part for parts in segments for part in parts]
    return shots


def run(args: argparse.Namespace) -> int:
    if args.action == "bundle":
        return _farm_bundle(args)
    try:
        return _farm_run(args)
    except RvmNodeError as exc:
        if args.progress_openjd:  # the reason, where the farm's worker agent looks for it
            print(f"openjd_fail: {exc}", flush=True)
        raise


def _farm_run(args: argparse.Namespace) -> int:
    import time

    from rvm_node.farm import NodePool, parse_nodes, run_shots
    from rvm_node.farm.openjd import progress_lines

    shots = _farm_shots(args, split_now=True)
    ca = read_ca(args.ca_file)
    pool = NodePool(
        parse_nodes(args.nodes),
        token=common.token(args.token_file),
        root_certificates=ca,
        stall_timeout=common.stall_timeout(args.stall_timeout),
    )
    pool.refresh()
    mixed = pool.mixed_backends()
    if mixed is not None and args.require_same_backend:
        pool.close()
        raise InvalidInputError(f"--require-same-backend: {mixed}")
    if mixed is not None:
        print(
            f"rvm-node: warning: {mixed}; a shot moved between them may differ by one quantisation step "
            "(--require-same-backend refuses such a pool)",
            file=sys.stderr,
        )
    started = time.monotonic()
    last_line = 0.0
    try:
        results = {}
        for event in run_shots(
            shots,
            pool,
            retries=args.retries,
            backoff=args.backoff,
            checkpoint_every=args.checkpoint_every,
            wait_for_node=args.wait_for_node,
        ):
            results[event.shot] = event.result
            if args.progress_json:
                print(event.progress().to_json(), flush=True)
            elif args.progress_openjd:
                if event.kind != "frame" or time.monotonic() - last_line > 1:
                    last_line = time.monotonic()
                    frames = sum(r.frames for r in results.values())
                    totals = [r.total for r in results.values()]
                    whole = (
                        None if None in totals or len(totals) < len(shots) else sum(t or 0 for t in totals)
                    )
                    for line in progress_lines(
                        event.kind, event.shot, frames, whole, event.node, event.message
                    ):
                        print(line, flush=True)
            elif event.kind != "frame" or time.monotonic() - last_line > 2:
                last_line = time.monotonic()
                done = sum(r.status == "done" for r in results.values())
                total = f"/{event.result.total}" if event.result.total is not None else ""
                eta = f"  ETA {event.eta:.0f}s" if event.eta is not None else ""
                print(
                    f"[{done}/{len(shots)} shots] {event.shot}: {event.kind} on {event.node or '-'}"
                    f"  {event.result.frames}{total} frames  {event.fps:.1f} frames/s{eta} {event.message}",
                    file=sys.stderr,
                )
    finally:
        pool.close()
    print(f"{'shot':24} {'status':8} {'frames':>7} {'retries':>7} {'time':>8}  nodes", file=sys.stderr)
    for shot in shots:
        r = results.get(shot.name)
        if r is not None:
            print(
                f"{r.shot:24} {r.status:8} {r.frames:7d} {r.retries:7d} {r.seconds:7.1f}s  {', '.join(r.nodes)}"
                f"{'  ' + r.reason if r.reason else ''}",
                file=sys.stderr,
            )
    print(f"total {time.monotonic() - started:.1f}s", file=sys.stderr)
    if all(r.status == "done" for r in results.values()) and len(results) == len(shots):
        return 0
    return common.EXIT_INPUT if any(r.output_failed for r in results.values()) else common.EXIT_BACKEND


def _farm_bundle(args: argparse.Namespace) -> int:
    """Write a farm job bundle; prints the bundle folder last."""
    from rvm_node.farm import DEFAULT_PREROLL
    from rvm_node.farm.bundle import PoolSettings, plan_job
    from rvm_node.farm.submit import submit_bundle, write_bundle

    if args.split < 1 or (args.preroll is not None and args.preroll < 0):
        raise InvalidInputError("--split must be >= 1 and --preroll >= 0")
    if args.cuebot and args.format != "opencue":
        raise InvalidInputError("--cuebot submits OpenCue specs: give --format opencue")
    shots = _farm_shots(args, split_now=False)
    pool = PoolSettings(
        nodes=args.nodes,
        token_file=str(args.token_file) if args.token_file else None,
        ca_file=str(args.ca_file) if args.ca_file else None,
        retries=args.retries,
        checkpoint_every=args.checkpoint_every,
        wait_for_node=args.wait_for_node,
    )
    job = plan_job(
        shots,
        pool,
        name=args.job_name
        or f"rvm-node mattes {shots[0].name}" + (f" +{len(shots) - 1}" if len(shots) > 1 else ""),
        rvm_node=args.rvm_node,
        split=args.split,
        preroll=(DEFAULT_PREROLL if args.preroll is None else args.preroll) if args.split > 1 else 0,
        shared_roots=args.shared_root,
    )
    bundle = write_bundle(job, args.output, format=args.format, overwrite=args.overwrite, show=args.show)
    print(f"{len(job.tasks)} task(s) for {len(shots)} shot(s): {bundle}", file=sys.stderr)
    if args.cuebot or args.submit_command:
        print(submit_bundle(bundle, command=args.submit_command, cuebot=args.cuebot), file=sys.stderr)
    print(bundle)
    return 0
