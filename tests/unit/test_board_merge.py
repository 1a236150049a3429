"""The link status board's merge (``replicator._board.merge_links``), one module, hand-made notes, and
that it ranks link states as a destination's partitions here do (``replicator._group``)."""

from __future__ import annotations

import itertools
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from meshgate.brokers import Broker
from meshgate.replicator import BoardNote, LinkBoard, LinkGroup, LinkOptions, LinkState
from meshgate.replicator._board import merge_links
from meshgate.replicator._group import BY_ATTENTION, merge_statuses, worst_state
from meshgate.v1 import admin_pb2

REPLICATING = admin_pb2.LINK_STATE_REPLICATING
BACKING_OFF = admin_pb2.LINK_STATE_BACKING_OFF
STANDBY = admin_pb2.LINK_STATE_STANDBY


def link(
    destination: str, state: admin_pb2.LinkState.ValueType, *, lag: int = 0, error: str = "", at: int = 0, fwd: int = 0
) -> admin_pb2.LinkStatus:
    status = admin_pb2.LinkStatus(
        destination=destination, state=state, lag_events=lag, lag_seconds=lag / 10, last_error=error, forwarded=fwd
    )
    if error:
        status.last_error_time.CopyFrom(Timestamp(seconds=at))
    return status


def note(owner: str, *links: admin_pb2.LinkStatus) -> BoardNote:
    return BoardNote(owner=owner, pid=1, host="h", posted=0.0, links=links)


def test_the_runner_is_shown_and_counters_add_up_over_the_live_processes() -> None:
    notes = [note("a/1", link("b", STANDBY, fwd=5)), note("a/2", link("b", REPLICATING, lag=30, fwd=100))]
    (b,) = merge_links("a", ["b"], notes)
    assert (b.state, b.lag_events, b.lag_seconds, b.forwarded, b.last_error) == (REPLICATING, 30, 3.0, 105, "")


def test_several_runners_show_the_state_most_in_need_and_the_latest_error() -> None:
    notes = [
        note("a/1", link("b", REPLICATING, lag=10, error="old", at=5)),
        note("a/2", link("b", BACKING_OFF, lag=50, error="call ended", at=9)),
    ]
    (b,) = merge_links("a", ["b"], notes)
    # Each runner's lag is that of its own partitions: the destination waits for their sum.
    assert (b.state, b.lag_events, b.last_error, b.last_error_time.seconds) == (BACKING_OFF, 60, "call ended", 9)


def test_links_nobody_runs_say_so_and_unknown_destinations_are_kept() -> None:
    notes = [note("a/1", link("b", STANDBY), link("old", REPLICATING))]
    b, c, old = merge_links("a", ["c", "b"], notes)
    assert (b.destination, b.state) == ("b", STANDBY)
    assert "no process of region a reports running the link to b" in b.last_error
    assert (c.destination, c.state) == ("c", admin_pb2.LINK_STATE_UNSPECIFIED)
    assert "no replicator process of region a runs the link to c" in c.last_error
    assert (old.destination, old.state) == ("old", REPLICATING)  # a region removed from the file


def test_counters_only_of_the_processes_asked_for() -> None:
    notes = [
        BoardNote(owner="a/1", pid=11, host="h", posted=0.0, links=(link("b", REPLICATING, fwd=5),), retries={"b": 2}),
        BoardNote(owner="a/2", pid=12, host="h", posted=0.0, links=(link("b", STANDBY, fwd=7),), retries={"b": 1}),
        BoardNote(owner="a/3", pid=13, host="h", posted=0.0, links=(link("b", STANDBY, fwd=100),)),
    ]
    board = LinkBoard(broker=cast(Broker, None), region="a", destinations=lambda: ["b"])
    board.notes = tuple(notes)
    assert board.counters({11, 12}) == {"b": (12, 3, 0)}
    assert board.counters(()) == {}


def test_a_note_round_trips_and_garbage_is_refused() -> None:
    original = BoardNote(
        owner="a/1",
        pid=1,
        host="h",
        posted=0.0,
        links=(link("b", BACKING_OFF, lag=3, error="x", at=7),),
        retries={"b": 4},
    )
    assert BoardNote.decode(original.encode()) == original
    for junk in (
        b"",
        b"{}",
        b"[1]",
        b'{"owner": "x"}',
        b'{"owner": "x", "pid": 1, "host": "h", "posted": 0, "links": [], "retries": 5}',
    ):
        try:
            BoardNote.decode(junk)
        except ValueError as exc:
            assert "not a link board note" in str(exc)
        else:
            raise AssertionError(f"{junk!r} decoded")


def test_partitions_are_the_union_of_the_runners_and_survive_a_note_s_round_trip() -> None:
    first, second, idle = link("b", REPLICATING), link("b", BACKING_OFF), link("b", STANDBY)
    first.partitions.extend([0, 2, 4])
    # A lease passing between two posts: partition 4 shown by both.
    second.partitions.extend([1, 4, 3])
    idle.partitions.extend([7])  # not running: its partitions are none of the destination's senders
    notes = [BoardNote.decode(note(o, s).encode()) for o, s in (("a/1", first), ("a/2", second), ("a/3", idle))]
    assert [list(n.links[0].partitions) for n in notes] == [[0, 2, 4], [1, 4, 3], [7]]
    (b,) = merge_links("a", ["b"], notes)
    assert list(b.partitions) == [0, 1, 2, 3, 4]
    # Nobody running: none.
    (c,) = merge_links("a", ["b"], notes[2:])
    assert list(c.partitions) == []


def _group_of(*states: LinkState) -> LinkGroup:
    """A destination's partitions here, one per state, none running (nothing behind them)."""
    group = LinkGroup(
        source="a",
        destination="b",
        address=None,
        broker=cast(Broker, None),
        options=LinkOptions(),
        partitions=len(states),
    )
    for part, state in zip(group.parts.values(), states, strict=True):
        part.state = state
    return group


def test_a_destination_s_partitions_and_the_board_s_processes_show_the_same_state() -> None:
    # The two merges of one destination's senders into one line, here and on the board, pick the
    # same state of every two: one ranking. Not the pair (stopped, stopped): a posting process
    # that runs the link nowhere is a standby on the board, and that line says why.
    for first, second in itertools.product(LinkState, repeat=2):
        if first is second is LinkState.STOPPED:
            continue
        here = _group_of(first, second).status().state
        (board,) = merge_links("a", ["b"], [note("a/1", link("b", first.value)), note("a/2", link("b", second.value))])
        assert (first, second, LinkState(here)) == (first, second, LinkState(board.state))


def test_the_ranking_puts_what_is_down_before_what_is_degraded_before_what_is_healthy() -> None:
    order = [
        LinkState.BACKING_OFF,
        LinkState.PAUSED,
        LinkState.CONNECTING,
        LinkState.REPLICATING,
        LinkState.STANDBY,
        LinkState.STOPPED,
    ]
    assert set(order) == set(LinkState) == set(BY_ATTENTION)
    assert list(reversed(order)) == list(BY_ATTENTION)
    for i, worse in enumerate(order):
        for better in order[i + 1 :]:
            assert worst_state([better, worse]) is worse
            assert worst_state([worse, better]) is worse
            assert _group_of(better, worse).state is worse
            # The board ranks its runners only (a standby or stopped process runs nothing).
            if better not in (LinkState.STANDBY, LinkState.STOPPED):
                statuses = [link("b", better.value), link("b", worse.value)]
                (merged,) = merge_links("a", ["b"], [note("a/1", statuses[0]), note("a/2", statuses[1])])
                assert merged.state == merge_statuses("b", statuses).state == worse.value
