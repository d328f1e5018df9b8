"""The shipped deployment files agree with what `rvm-node serve` takes and serves.

No Docker engine or Kubernetes cluster runs here: the image is not built and
the manifests are not applied; they are parsed and checked against the CLI.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from rvm_node.cli import build_parser
from rvm_node.node.server import SERVICE_NAME

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def serve_args(args: list[str]):
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"
    return parsed


def test_kubernetes_manifests() -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "rvm-node.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    service = next(d for d in documents if d["kind"] == "Service")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = serve_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == args.port and ports["metrics"] == args.metrics_port
    assert args.host == "0.0.0.0" and args.device == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["grpc"] == {"port": args.port, "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == args.port
    assert pod["terminationGracePeriodSeconds"] > args.grace
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS returns every pod
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == args.port


def test_systemd_unit() -> None:
    text = (DEPLOY / "systemd" / "rvm-node.service").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    command = shlex.split(line.removeprefix("ExecStart=").replace("%i", "0"))
    assert command[0].endswith("/rvm-node")
    args = serve_args(command[1:])
    assert (args.port, args.metrics_port, args.device) == (50050, 9100, "cuda")
    stop = int(next(v.split("=")[1] for v in text.splitlines() if v.startswith("TimeoutStopSec=")))
    assert stop > args.grace
    assert "KillSignal=SIGTERM" in text


def test_dockerfile() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    args = serve_args(yaml.safe_load(cmd.removeprefix("CMD ")))
    exposed = {int(p) for line in text.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert {args.port, args.metrics_port} <= exposed
    assert 'ENTRYPOINT ["rvm-node"]' in text and ".[gpu]" in text and "weights fetch" in text
