"""``rvm-node convert`` (a shot on this machine) and ``rvm-node matte`` (a shot on a render node)."""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from rvm_node.cli import common, options
from rvm_node.credentials import read_ca
from rvm_node.errors import InvalidInputError

__all__ = ["add_parser", "run"]


_CONVERT_EXAMPLES = """examples:
  rvm-node convert --input-source plate.mov --output-alpha mattes/plate.####.exr   # EXR sequence (RGBA half)
  rvm-node convert --input-source plate.####.exr --frames 1001-1100 --output-alpha m.####.png --bit-depth 16
  rvm-node convert --input-source plate.mov --output-composition comp.mp4 --output-alpha alpha.mp4

The output's extension picks its format: .exr, .png, .tif, .tiff (frame patterns with ####) or .mp4, .mov
(video). A killed run continues with --resume.
"""

_MATTE_EXAMPLES = """examples:
  rvm-node matte --node gpu01:50051 --input-source plate.mov --output-alpha mattes/plate.####.exr
  rvm-node matte --node unix:///run/rvm/node.sock --input-source shot.####.exr --output-alpha m.####.exr
  rvm-node matte --node gpu01:50051 --token-file ~/.rvm-token --input-source plate.mov --output-alpha m.mp4 --resume
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = sub.add_parser(
        "convert",
        help="matte a video or image sequence (accepts the official convert_video command line)",
        description="Matte a video, a frame pattern (plate.####.exr) or a directory of images. "
        "The official converter's options are accepted verbatim.",
        epilog=_CONVERT_EXAMPLES,
    )
    options.add_shot_options(convert)
    matte = sub.add_parser(
        "matte",
        help="matte a video or image sequence on a render node",
        description="Stream a shot to a render node and write the mattes, with the options of convert.",
        epilog=_MATTE_EXAMPLES,
    )
    options.add_shot_options(matte, engine=False)  # the node's model runs the shot
    node = matte.add_argument_group("node options")
    node.add_argument("--node", required=True, help="HOST:PORT or unix:///PATH of the render node")
    options.add_connection_options(node)
    options.add_stall_timeout(node)
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


def _frame_rate(text: str | None) -> Fraction | None:
    """``--frame-rate``: a positive number or fraction (24000/1001), or None when not given."""
    if text is None:
        return None
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise InvalidInputError(
            f"--frame-rate: expected a number or a fraction such as 24000/1001, got {text!r}"
        ) from None
    if rate <= 0:
        raise InvalidInputError(f"--frame-rate: expected a positive rate, got {text}")
    return rate


def run(args: argparse.Namespace) -> int:
    from rvm_node.client.shots import NodeJobCut, node_job_cut
    from rvm_node.convert import RESUME_WARMUP, ConvertJob, ShotSpec, run_job
    from rvm_node.io.sequence import parse_frame_range
    from rvm_node.io.writers import WriterSettings

    if args.progress_json and (args.quiet or args.disable_progress):
        raise InvalidInputError("--progress-json cannot be combined with --quiet or --disable-progress")
    rate = _frame_rate(args.frame_rate)
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
    cut = NodeJobCut(seq_chunk=1, num_workers=0)  # the official converter's, for convert
    if args.command == "matte":
        from rvm_node.client import NodeClient, RemoteBackend
        from rvm_node.io.sources import open_source

        open_source(
            args.input_source
        )  # the shot's own input first: a wrong path is said before a node is asked
        cut = node_job_cut()

        ca = read_ca(args.ca_file)
        client = NodeClient(
            args.node,
            token=common.token(args.token_file),
            root_certificates=ca,
            stall_timeout=common.stall_timeout(args.stall_timeout),
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

        backend = common.load_local(args, shared_cpu_options(args.backend))
    job = ConvertJob(
        backend=backend,
        shot=ShotSpec(
            input_source=args.input_source,
            outputs=outputs,  # type: ignore[arg-type]
            output_type=args.output_type,
            downsample_ratio=args.downsample_ratio,
            input_resize=tuple(args.input_resize) if args.input_resize else None,
            frames=parse_frame_range(args.frames) if args.frames else None,
            start_frame=args.start_frame,
            input_colorspace=args.input_colorspace,
            allow_gaps=args.allow_gaps,
            no_autorotate=args.no_autorotate,
            background=args.background,
            settings=settings,
            frame_rate=rate,
        ),
        seq_chunk=args.seq_chunk if args.seq_chunk is not None else cut.seq_chunk,
        num_workers=args.num_workers if args.num_workers is not None else cut.num_workers,
        resume=args.resume,
        overwrite=args.overwrite,
        resume_warmup=RESUME_WARMUP if args.resume_warmup is None else args.resume_warmup,
        progress="json" if args.progress_json else ("off" if args.quiet or args.disable_progress else "bar"),
    )
    report = run_job(job)
    for kind, target in report.outputs.items():
        print(f"{kind}: {target}", file=sys.stderr)
    print(
        f"{common.plural(report.frames_written, 'frame')} written, {report.frames_skipped} already done",
        file=sys.stderr,
    )
    return 0
