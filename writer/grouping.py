"""Group commit: which of the results the writer holds it commits now, whatever the batch size.

A commit costs the same few files whether it carries 8 rows or 1,024 (every array's shard or
chunk is rewritten whole), so the writer holds results and commits them together:
- the run, the held results that continue the readable prefix (`committed_rows`) without a gap,
  is cut at the last multiple of SHARD_ROWS it reaches (at most WRITER_COMMIT_ROWS rows): each
  shard is written once, whole, while results flow fast enough;
- a run that reaches no boundary is committed once its oldest result has waited WRITER_LINGER_S:
  the readable prefix still moves within about a second while results flow slowly;
- results past a gap (a batch still on its way) wait WRITER_GAP_LINGER_S for the gap to fill;
- everything held goes at once when the stream is full (workers wait for room, so nothing more
  can arrive), when it is all the jobs still owe, and redeliveries of committed batches go at once
  (they write nothing; acknowledging them frees the stream), and so do retry batches
  (`--retry-failed`), which rewrite rows below the prefix, each alone.
The decision is a pure function of what is held and the time, so that tests replay it exactly.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from comix_embed.common import config
from comix_embed.common.broker.results_stream import Entry
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.retries import is_retry_batch


@dataclass
class Held:
    """A result read from the stream and not committed yet; `entries` are its stream entries
    (more than one when the batch was delivered again while held)."""

    result: BatchResult
    since: float  # monotonic time it was read
    entries: list[Entry] = field(default_factory=list)


def due(
    held: dict[int, Held],
    prefix_end: int,
    now: float,
    committed: Container[int],
    *,
    flush: bool = False,
) -> list[Held]:
    """The held results to commit now, in row order (see the module's docstring).

    `prefix_end` is `committed_rows`; `committed` the batches that have a manifest; `flush` says
    that everything held goes now (the stream is full, or it is all the jobs owe).
    """
    if flush:
        return sorted(held.values(), key=lambda h: h.result.start)
    again = [h for b, h in held.items() if b in committed or is_retry_batch(b)]
    by_start = {h.result.start: h for b, h in held.items() if b not in committed and not is_retry_batch(b)}
    run: list[Held] = []
    end = prefix_end
    while end in by_start:
        run.append(by_start[end])
        end = run[-1].result.end
    out = list(again)
    if run:
        cut = min(end, prefix_end + config.WRITER_COMMIT_ROWS) // config.SHARD_ROWS * config.SHARD_ROWS
        if cut > prefix_end:
            out += [h for h in run if h.result.end <= cut] or run[:1]  # a batch larger than a shard goes alone
        elif now - min(h.since for h in run) >= config.WRITER_LINGER_S:
            out += run
    in_run = {id(h) for h in run}
    out += [h for h in by_start.values() if id(h) not in in_run and now - h.since >= config.WRITER_GAP_LINGER_S]
    return sorted(out, key=lambda h: h.result.start)
