"""One forward pass for several streams: which chunks may share one (:func:`batch_key`), and running them
(:func:`process_batch`), each stream's state stacked in and split back out."""

from __future__ import annotations

from typing import Any

import numpy as np

from rvm_node.engine.chunks import MatteChunk
from rvm_node.engine.session import MattingSession
from rvm_node.errors import InvalidInputError

__all__ = ["batch_key", "process_batch"]


def batch_key(session: MattingSession, frames: np.ndarray) -> tuple[Any, ...]:
    """Chunks with equal keys can share one forward pass: same backend, shape, ratio, input type and outputs."""
    height, width = frames.shape[-2:]
    ratio = session.ratio_for(height, width)
    return (id(session.backend), frames.shape, frames.dtype.str, ratio, session.outputs)


def process_batch(sessions: list[MattingSession], chunks: list[Any]) -> list[MatteChunk | BaseException]:
    """One forward pass for one ``[T, 3, H, W]`` chunk of each of several single-stream sessions.

    The sessions must be distinct and their admitted chunks share a
    :func:`batch_key`. Each session's state is stacked in and split back out,
    so every stream continues exactly as if it ran alone. A chunk a session
    refuses gets its own error in the result list and leaves the batch;
    a failing forward pass raises, and no session's state changes.
    """
    results: list[Any] = [None] * len(sessions)
    admitted: list[tuple[int, MattingSession, np.ndarray, float]] = []
    for index, (session, chunk) in enumerate(zip(sessions, chunks, strict=True)):
        try:
            src, ratio = session.admit(chunk)
            if src.shape[0] != 1:
                raise InvalidInputError(f"frames: a batched chunk holds one stream, got {src.shape[0]}")
        except InvalidInputError as exc:
            results[index] = exc
            continue
        admitted.append((index, session, src, ratio))
    if not admitted:
        return results
    if len(admitted) == 1:
        index, session, src, ratio = admitted[0]
        out = session.run_admitted(src, ratio)
        results[index] = MatteChunk(None if out.fgr is None else out.fgr[0], out.pha[0])
        return results
    first = admitted[0]
    keys = {batch_key(sessions[index], np.asarray(chunks[index])) for index, *_ in admitted}
    if len(keys) != 1:
        raise InvalidInputError("batch: chunks of different shapes, ratios or outputs cannot share a pass")
    backend = first[1].backend
    started = [s.state for _, s, _, _ in admitted]
    template = next((s for s in started if s is not None), None)
    if template is None:
        state = None
    else:
        zeros = backend.zero_state_like(template) if None in started else None
        state = backend.stack_states([s if s is not None else zeros for s in started])
    src = np.concatenate([a[2] for a in admitted])
    fgr, pha, new_state = backend.infer(src, state, first[3], first[1].outputs)
    states = backend.split_state(new_state, len(admitted))
    for position, (index, session, one, ratio) in enumerate(admitted):
        session.commit(states[position], one, ratio)
        results[index] = MatteChunk(None if fgr is None else fgr[position], pha[position])
    return results
