"""Matte the selected Reads: shots go to the farm layer in a worker thread; the graph changes on the main thread.

With the ``farm`` target the same shots go into a farm job bundle instead
(:mod:`rvm_nuke.farm`), written and submitted in the worker thread; the matte
Reads are wired at once, on the main thread, pointing at the frames the job writes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import nuke

from rvm_nuke import farm, graph, reads
from rvm_nuke import settings as settings_module
from rvm_nuke.settings import Settings, SettingsError

if TYPE_CHECKING:
    from rvm_node.farm.submit import SubmittedJob


def _report(text: str) -> None:
    """One clear line: a dialog in the GUI, stderr under `nuke -t`."""
    if getattr(nuke, "GUI", False):
        nuke.message(text)
    else:
        print(text, file=sys.stderr)


def _token(settings: Settings) -> str | None:
    from rvm_node.credentials import read_token
    from rvm_node.errors import InvalidInputError

    try:
        return read_token(settings.token_file or None)
    except InvalidInputError as exc:
        raise SettingsError(f"RVM: {exc}") from None


def _pool(settings: Settings) -> Any:
    from rvm_node.credentials import read_ca
    from rvm_node.errors import InvalidInputError
    from rvm_node.farm import NodePool

    try:
        ca = read_ca(settings.ca_file or None)
    except InvalidInputError as exc:
        raise SettingsError(f"RVM: {exc}") from None
    return NodePool(settings.nodes, token=_token(settings), root_certificates=ca)


def _local_pool(settings: Settings) -> Any:
    """A pool of this Nuke's private node, started on first use (it stops when Nuke quits)."""
    import shlex

    from rvm_node.client.private_node import private_node
    from rvm_node.errors import RvmNodeError
    from rvm_node.farm import NodePool

    try:
        node = private_node(shlex.split(settings.rvm_node_command))
    except RvmNodeError as exc:
        raise SettingsError(f"RVM: this computer: {exc}") from None
    return NodePool([node.address], token=node.token)


def _label(settings: Settings, nodes: list[str]) -> str:
    ratio = "auto" if settings.ratio is None else f"{settings.ratio:g}"
    return f"RVM matte\n{', '.join(nodes)}\n{settings.format}, ratio {ratio}"


def _apply(done: list[tuple[Any, Any, list[str]]], failures: list[str], settings: Settings) -> None:
    """Main thread: wire finished mattes into the script, then report failures."""
    for read, shot, nodes in done:
        graph.wire_matte(
            read, shot.outputs["alpha"], shot.frames.first, shot.frames.last, _label(settings, nodes)
        )
    if failures:
        _report("; ".join(failures))


def _run(
    jobs: list[tuple[Any, Any]], settings: Settings, pool: Any, on_main: bool, temporaries: list[str]
) -> dict[str, Any]:
    from rvm_node.errors import RvmNodeError
    from rvm_node.farm import run_shots

    task = nuke.ProgressTask("RVM Matte")
    cancel = threading.Event()
    total = sum(len(shot.frames) for _, shot in jobs)
    results: dict[str, Any] = {}
    failures: list[str] = []
    try:
        written = 0
        for event in run_shots([shot for _, shot in jobs], pool, cancel=cancel):
            results[event.shot] = event.result
            progress = event.progress()  # the one progress-event schema
            if progress.kind == "frame":
                written += 1
                task.setProgress(int(100 * written / max(total, 1)))
                task.setMessage(f"{progress.shot} on {progress.node}: {progress.fps:.1f} frames/s")
            if task.isCancelled():
                cancel.set()
    except (RvmNodeError, SettingsError) as exc:
        failures.append(str(exc))
    finally:
        pool.close()
        for directory in temporaries:  # renders of non-Read nodes were only inputs
            shutil.rmtree(directory, ignore_errors=True)
    for read, shot in jobs:
        result = results.get(shot.name)
        if result is not None and result.status != "done":
            failures.append(f"RVM: {read.name()}: {result.status}: {result.reason}")
    done = [
        (read, shot, results[shot.name].nodes)
        for read, shot in jobs
        if shot.name in results and results[shot.name].status == "done"
    ]
    if on_main:
        _apply(done, failures, settings)
    else:
        nuke.executeInMainThread(_apply, (done, failures, settings))
    return results


def _render_to_sequence(node: Any) -> tuple[str, int, int]:
    """Render a non-Read node through a temporary sRGB Write; return (pattern, first, last)."""
    first = int(nuke.root()["first_frame"].value())
    last = int(nuke.root()["last_frame"].value())
    directory = tempfile.mkdtemp(prefix=f"rvm-{node.name()}-")
    pattern = os.path.join(directory, "render.####.png")
    write = nuke.nodes.Write(
        file=pattern, file_type="png", datatype="16 bit", colorspace="sRGB", channels="rgb"
    )
    write.setInput(0, node)
    try:
        nuke.execute(write, first, last)
    finally:
        nuke.delete(write)
    return pattern, first, last


def _shot_for(node: Any, chosen: Settings, temporaries: list[str]) -> Any:
    """The shot for a Read, or for any other node rendered first (its render folder goes in ``temporaries``)."""
    if node.Class() == "Read":
        return reads.shot_for_read(node, chosen, nuke.root())
    pattern, first, last = _render_to_sequence(node)
    temporaries.append(os.path.dirname(pattern))
    proxy = nuke.nodes.Read(
        name=node.name(),
        file=pattern,
        first=first,
        last=last,
        origfirst=first,
        origlast=last,
        colorspace="sRGB",
    )
    try:
        return reads.shot_for_read(proxy, chosen, nuke.root())
    finally:
        nuke.delete(proxy)


def _farm_label(settings: Settings, submitted: SubmittedJob) -> str:
    ratio = "auto" if settings.ratio is None else f"{settings.ratio:g}"
    return f"RVM matte (farm)\n{submitted.bundle.name}\n{settings.format}, ratio {ratio}"


def _apply_submitted(
    jobs: list[tuple[Any, Any]], submitted: SubmittedJob | None, failure: str, settings: Settings
) -> None:
    """Main thread: wire a matte Read of each shot's frames-to-be, then report the job; on failure, only report."""
    if submitted is None:
        _report(failure)
        return
    for read, shot in jobs:
        graph.wire_matte(
            read,
            shot.outputs["alpha"],
            shot.frames.first,
            shot.frames.last,
            _farm_label(settings, submitted),
            on_error="black",  # the frames arrive as the farm writes them
        )
    _report(farm.report_line(submitted))


def _submit(
    jobs: list[tuple[Any, Any]], settings: Settings, script: str, on_main: bool
) -> SubmittedJob | None:
    """Write and submit the job bundle (the worker thread in the GUI), then wire the mattes on the main thread."""
    submitted, failure = None, ""
    try:
        submitted = farm.submit_shots([shot for _, shot in jobs], settings, script)
    except (farm.FarmError, SettingsError) as exc:
        failure = str(exc).splitlines()[0]
    if on_main:
        _apply_submitted(jobs, submitted, failure, settings)
    else:
        nuke.executeInMainThread(_apply_submitted, (jobs, submitted, failure, settings))
    return submitted


def _farm_shot(node: Any, chosen: Settings) -> Any:
    if node.Class() != "Read":
        raise SettingsError(
            f"RVM: {node.name()} is a {node.Class()}; the farm mattes Read nodes (render it to files first, "
            "or run it here)"
        )
    return reads.shot_for_read(node, chosen, nuke.root())


def _dispatch(
    work: Callable[..., Any], args: tuple[Any, ...], blocking: bool | None, name: str, *rest: Any
) -> Any:
    """Run ``work(*args, on_main, *rest)``: here when ``blocking`` (default under `nuke -t`), else in a
    worker thread, which hands its graph changes to the main thread."""
    if blocking is None:
        blocking = not getattr(nuke, "GUI", False)
    if blocking:
        return work(*args, True, *rest)
    threading.Thread(target=work, args=(*args, False, *rest), name=name, daemon=True).start()
    return None


def _submit_selected(selected: list[Any], chosen: Settings, blocking: bool | None) -> SubmittedJob | None:
    try:
        jobs = [(node, _farm_shot(node, chosen)) for node in selected]
        script = str(nuke.root()["name"].value() or "")
    except (SettingsError, ValueError, RuntimeError) as exc:
        _report(str(exc).splitlines()[0])
        return None
    return _dispatch(_submit, (jobs, chosen, script), blocking, "rvm-nuke-submit")


def matte_selected(
    settings: Settings | None = None, blocking: bool | None = None
) -> dict[str, Any] | SubmittedJob | None:
    """Matte every selected Read. Runs in a thread in the GUI; ``blocking`` (default under `nuke -t`) waits.

    With the ``farm`` target, submit them as one farm job instead: the result
    is the submitted job (``rvm_node.farm.submit.SubmittedJob``).
    """
    try:
        chosen = settings or settings_module.for_script(settings_module.load(), nuke.root())
        selected = nuke.selectedNodes()
        if not selected:
            raise SettingsError("RVM: select one or more Read nodes first")
    except (SettingsError, ValueError, RuntimeError) as exc:
        _report(str(exc).splitlines()[0])
        return None
    where = settings_module.runs_here_on(chosen)
    if where == "farm":
        return _submit_selected(selected, chosen, blocking)
    try:
        temporaries: list[str] = []
        jobs = [(node, _shot_for(node, chosen, temporaries)) for node in selected]
        pool = _local_pool(chosen) if where == "local" else _pool(chosen)
    except (SettingsError, ValueError, RuntimeError) as exc:
        _report(str(exc).splitlines()[0])
        return None
    return _dispatch(_run, (jobs, chosen, pool), blocking, "rvm-nuke", temporaries)


def test_connection(settings: Settings | None = None) -> list[str]:
    """Ask every configured node for its info; report what answered, one line per node."""
    from rvm_node.client import NodeClient
    from rvm_node.errors import RvmNodeError

    try:
        chosen = settings or settings_module.for_script(settings_module.load(), nuke.root())
        token = _token(chosen)
    except SettingsError as exc:
        _report(str(exc))
        return []
    lines = []
    for address in chosen.nodes:
        try:
            with NodeClient(address, token=token, retries=0) as client:
                info = client.info()
            lines.append(
                f"{address}: rvm-node {info.version}, {info.backend} on {info.device}, "
                f"{info.active_streams}/{info.max_streams} streams"
            )
        except RvmNodeError as exc:
            lines.append(f"{address}: {exc}")
    _report("\n".join(lines))
    return lines
