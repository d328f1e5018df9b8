"""``rvm-node info``: ask render nodes what they run and how busy they are."""

from __future__ import annotations

import argparse

from rvm_node.cli import common, options
from rvm_node.credentials import read_ca
from rvm_node.errors import InvalidInputError, NodeError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = sub.add_parser(
        "info",
        help="ask render nodes what they run and how busy they are",
        description="Ask each node its version, backend, device and precision, and how many streams it runs.",
        epilog="examples:\n  rvm-node info --nodes gpu01:50051,gpu02:50051\n  rvm-node info --nodes gpu01:50051 --json\n",
    )
    info.add_argument(
        "--nodes",
        "--node",
        dest="nodes",
        required=True,
        action=common.Renamed,
        help="HOST:PORT, or several comma-separated (--node, its old name, still works)",
    )
    options.add_connection_options(info)
    info.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each node")
    info.add_argument("--json", action="store_true", help="one JSON object per node on stdout")


def run(args: argparse.Namespace) -> int:
    """One line per node; exit 4 when any node did not answer."""
    import dataclasses
    import json

    from rvm_node.client import NodeClient

    addresses = [a.strip() for a in args.nodes.split(",") if a.strip()]
    if not addresses:
        raise InvalidInputError("--nodes: expected HOST:PORT, or several comma-separated")
    token = common.token(args.token_file)
    ca = read_ca(args.ca_file)
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
    return common.EXIT_BACKEND if failed else 0
