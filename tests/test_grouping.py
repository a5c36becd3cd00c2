"""Group commit's decisions (writer/grouping.py), replayed exactly: no clock, no sleep."""

from __future__ import annotations

from comix_embed.common import config
from comix_embed.common.broker.results_stream import Entry
from comix_embed.common.store.results import BatchResult
from comix_embed.writer.grouping import Held, due

LINGER, GAP = config.WRITER_LINGER_S, config.WRITER_GAP_LINGER_S


def _held(batches: range | list[int], size: int = 8, since: float = 0.0, first_row: int = 0) -> dict[int, Held]:
    """Results of batches of `size` rows (batch b owns rows first_row + b*size ...), read at `since`."""
    out = {}
    for b in batches:
        start = first_row + b * size
        result = BatchResult(
            job="job_000001", batch_id=b, start=start, page_ids=[f"p{r}" for r in range(start, start + size)], arrays={}
        )
        out[b] = Held(result, since, [Entry(f"{b}-0".encode(), b, b"")])
    return out


def _ids(group: list[Held]) -> list[int]:
    return [h.result.batch_id for h in group]


def test_a_run_is_cut_at_the_last_shard_boundary_it_reaches() -> None:
    rows_per_shard = config.SHARD_ROWS // 8
    held = _held(range(rows_per_shard + 3))  # rows 0 .. SHARD_ROWS + 24
    assert _ids(due(held, 0, 0.0, set())) == list(range(rows_per_shard))  # at once, no linger


def test_a_commit_carries_at_most_the_commit_rows() -> None:
    held = _held(range(4 * config.SHARD_ROWS // 8))
    group = due(held, 0, 0.0, set())
    assert group[-1].result.end == config.WRITER_COMMIT_ROWS and _ids(group) == list(range(len(group)))


def test_an_unaligned_prefix_first_completes_its_shard() -> None:
    # committed_rows 1000: batches of 8 from row 1000; the run reaches 1024 after three of them
    held = _held(range(10), first_row=1000)
    assert [(h.result.start, h.result.end) for h in due(held, 1000, 0.0, set())] == [
        (1000, 1008),
        (1008, 1016),
        (1016, 1024),
    ]


def test_a_short_run_waits_for_the_linger_then_goes_whole() -> None:
    held = _held(range(100), since=5.0)  # 800 rows: no boundary reached
    assert due(held, 0, 5.0, set()) == []
    assert due(held, 0, 5.0 + LINGER / 2, set()) == []
    assert _ids(due(held, 0, 5.0 + LINGER, set())) == list(range(100))


def test_results_past_a_gap_wait_the_gap_linger() -> None:
    held = _held(range(2, 6), since=1.0)  # batches 0 and 1 not arrived
    assert due(held, 0, 1.0 + LINGER, set()) == []
    assert _ids(due(held, 0, 1.0 + GAP, set())) == [2, 3, 4, 5]


def test_the_run_goes_on_time_while_results_past_its_gap_still_wait() -> None:
    held = {**_held([0, 1], since=0.0), **_held([5, 6], since=0.0)}
    assert _ids(due(held, 0, LINGER, set())) == [0, 1]


def test_redeliveries_of_committed_batches_go_at_once() -> None:
    held = _held([3, 7], since=0.0)
    assert _ids(due(held, 32, 0.0, {0, 1, 2, 3})) == [3]


def test_flush_takes_everything_held_in_row_order() -> None:
    held = _held([9, 2, 4])
    assert _ids(due(held, 0, 0.0, set(), flush=True)) == [2, 4, 9]


def test_a_batch_larger_than_a_shard_goes_alone() -> None:
    held = _held(range(3), size=config.SHARD_ROWS + 476)
    assert _ids(due(held, 0, 0.0, set())) == [0]
