"""Open Job Description job bundles (``jobtemplate-2023-09``), as AWS Deadline Cloud runs them.

A bundle is a folder::

    template.yaml            the job: parameters, one step "Matte", one task per shot or segment
    parameter_values.yaml    the job parameters' values, in Deadline Cloud's form
    job_parameters.json      the same values for ``openjd run``:
                             openjd run DIR/template.yaml -p file://DIR/job_parameters.json

Parameters other than paths also carry their value as the template's
default (OpenJD takes only relative default paths). The step's tasks are the
shots, zipped from task parameters (``Shot``, ``Input``, ``Settings``, and
``Segment`` and per-shot outputs where there are any). Inputs and outputs are
``PATH`` parameters, so the farm's path mapping rules apply to them.

A task prints ``openjd_progress`` and ``openjd_status`` lines, which the
worker agent shows, and on failure an ``openjd_fail`` line with the reason
before it exits non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rvm_node.farm.bundle import JOB_PARAMETERS, FarmJob, task_argv, task_values

__all__ = [
    "LOCAL_VALUES",
    "PARAMETER_VALUES",
    "SPECIFICATION",
    "job_parameter_values",
    "job_template",
    "progress_lines",
    "write_openjd_bundle",
]

SPECIFICATION = "jobtemplate-2023-09"
PARAMETER_VALUES = "parameter_values.yaml"  # Deadline Cloud's name and form
LOCAL_VALUES = "job_parameters.json"  # the same values as `openjd run -p file://...` takes them
STEP = "Matte"


def _job_parameters(job: FarmJob) -> list[dict[str, Any]]:
    pool = job.pool
    parameters: list[dict[str, Any]] = [
        {
            "name": "RvmNode",
            "type": "STRING",
            "minLength": 1,
            "default": job.rvm_node,
            "description": "The rvm-node command on the workers (a name on PATH or a full path).",
        },
        {
            "name": "Nodes",
            "type": "STRING",
            "minLength": 1,
            "default": pool.nodes,
            "description": "The render node pool: HOST:PORT,HOST:PORT, dns:///NAME:PORT, or a nodes.toml path.",
        },
        {
            "name": "TokenFile",
            "type": "STRING",
            "default": pool.token_file or "",
            "description": "Bearer token file on the workers; empty: $RVM_NODE_TOKEN.",
        },
        {
            "name": "CaFile",
            "type": "STRING",
            "default": pool.ca_file or "",
            "description": "CA certificate on the workers, to reach the nodes over TLS; empty: plain.",
        },
        {
            "name": "Retries",
            "type": "INT",
            "minValue": 0,
            "default": pool.retries,
            "description": "Moves of a shot to another node within one task run.",
        },
        {
            "name": "CheckpointEvery",
            "type": "INT",
            "minValue": 1,
            "default": pool.checkpoint_every,
            "description": "Frames between state checkpoints: a retried task recomputes at most this many.",
        },
        {
            "name": "WaitForNode",
            "type": "FLOAT",
            "minValue": 0,
            "default": pool.wait_for_node,
            "description": "Seconds a task waits for a free render node.",
        },
    ]
    for key, value in job.shared.items():
        name = JOB_PARAMETERS[key]
        if key == "downsample_ratio":
            parameters.append(
                {
                    "name": name,
                    "type": "STRING",
                    "minLength": 1,
                    "default": str(value),
                    "description": "Downsample ratio of every shot: a number in (0, 1], or auto.",
                }
            )
        else:
            parameters.append(
                {
                    "name": name,
                    "type": "PATH",
                    "dataFlow": "OUT",
                    "default": str(value),
                    "description": f"{key.removeprefix('output_').capitalize()} frames of every shot; "
                    "{shot} is the shot's name, #### the frame number, the extension the format.",
                }
            )
    return parameters


def _task_parameters(job: FarmJob) -> list[dict[str, Any]]:
    tasks = job.tasks
    parameters: list[dict[str, Any]] = [
        {"name": "Shot", "type": "STRING", "range": [t.shot for t in tasks]},
        {"name": "Input", "type": "PATH", "range": [t.input for t in tasks]},
        {"name": "Settings", "type": "STRING", "range": [task_values(job, t)["Settings"] for t in tasks]},
    ]
    if job.split > 1:
        parameters.append({"name": "Segment", "type": "INT", "range": [t.segment for t in tasks]})
    for key in job.task_outputs:
        parameters.append(
            {"name": JOB_PARAMETERS[key], "type": "PATH", "range": [t.outputs[key] for t in tasks]}
        )
    return parameters


def _definitions(job: FarmJob) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job parameter definitions, and every parameter's value. A PATH parameter's value is not a
    default in the template: OpenJD takes only relative default paths."""
    definitions, values = [], {}
    for parameter in _job_parameters(job):
        values[parameter["name"]] = parameter["default"]
        if parameter["type"] == "PATH":
            parameter = {k: v for k, v in parameter.items() if k != "default"}
        definitions.append(parameter)
    return definitions, values


def job_template(job: FarmJob) -> dict[str, Any]:
    """The job template, as a mapping ready for YAML."""
    definitions, _ = _definitions(job)
    task_parameters = _task_parameters(job)
    placeholders: dict[str, str | None] = {p["name"]: f"{{{{Param.{p['name']}}}}}" for p in definitions}
    placeholders.update({p["name"]: f"{{{{Task.Param.{p['name']}}}}}" for p in task_parameters})
    argv = task_argv(job, placeholders, progress="--progress-openjd")
    return {
        "specificationVersion": SPECIFICATION,
        "name": job.name[:128],
        "description": f"rvm-node mattes: {len(job.tasks)} task(s) streaming shots to render nodes",
        "parameterDefinitions": definitions,
        "steps": [
            {
                "name": STEP,
                "parameterSpace": {
                    "taskParameterDefinitions": task_parameters,
                    "combination": "(" + ", ".join(p["name"] for p in task_parameters) + ")",
                },
                "script": {"actions": {"onRun": {"command": argv[0], "args": argv[1:]}}},
            }
        ],
    }


def job_parameter_values(job: FarmJob) -> dict[str, Any]:
    """Every job parameter's value, by name (the form ``openjd run -p file://...`` takes)."""
    return _definitions(job)[1]


def write_openjd_bundle(job: FarmJob, directory: Path) -> list[Path]:
    """Write the bundle's files into ``directory``; the files written."""
    values = job_parameter_values(job)
    documents = {
        "template.yaml": job_template(job),
        PARAMETER_VALUES: {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]},
    }
    files = []
    for name, document in documents.items():
        path = directory / name
        path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))
        files.append(path)
    files.append(directory / LOCAL_VALUES)
    files[-1].write_text(json.dumps(values, indent=2) + "\n")
    return files


def progress_lines(
    kind: str, shot: str, frames: int, total: int | None, node: str | None, message: str
) -> list[str]:
    """The ``openjd_*`` lines for one farm event of a task's shot."""
    where = f" on {node}" if node else ""
    counted = f"{frames}/{total}" if total is not None else f"{frames}"
    lines = []
    if total:
        lines.append(f"openjd_progress: {min(100.0, 100.0 * frames / total):.1f}")
    if kind == "failed":
        lines.append(f"openjd_fail: shot {shot}: {message}")
    elif kind != "frame":
        lines.append(
            f"openjd_status: {shot}: {kind}{where}, {counted} frames{': ' + message if message else ''}"
        )
    return lines
