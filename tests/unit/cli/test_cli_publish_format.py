"""How ``meshgate publish`` prints an ack: the stream only when the region has several."""

from __future__ import annotations

from meshgate.cli._publish import _format
from meshgate.v1 import event_pb2


def test_an_ack_of_a_kafka_region_names_its_partition() -> None:
    r = event_pb2.EventResult(
        id="o-1", outcome=event_pb2.OUTCOME_ACCEPTED, sequence=42, stream="mesh.orders.created/3", route=["a", "b"]
    )
    assert _format(r) == "accepted id=o-1 seq=42 stream=mesh.orders.created/3 route=a,b"


def test_an_ack_of_a_nats_region_has_no_stream() -> None:
    r = event_pb2.EventResult(id="o-1", outcome=event_pb2.OUTCOME_DUPLICATE, sequence=7, route=["a"])
    assert _format(r) == "duplicate id=o-1 seq=7 route=a"
