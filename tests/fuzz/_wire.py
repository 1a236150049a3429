"""Hypothesis strategies for request bytes: random, mutated valid, hand-made wire fields, deep nesting.

The protobuf wire format by hand (varints, tags, length-delimited fields, groups), so inputs
can say what no generated class would let them say: a string field sent as a varint, a length
prefix far beyond the message, unknown groups nested hundreds deep.
"""

from __future__ import annotations

from google.protobuf.message import Message
from hypothesis import strategies as st

__all__ = ["group_nest", "len_nest", "mutated", "raw_fields", "request_bytes", "tag", "varint"]

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_START, _WIRE_END, _WIRE_I32 = 0, 1, 2, 3, 4, 5


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as protobuf writes them: ten bytes of two's complement
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def group_nest(field: int, depth: int, inner: bytes = b"") -> bytes:
    """``depth`` unknown groups one inside the other (protobuf parsers recurse on them)."""
    return tag(field, _WIRE_START) * depth + inner + tag(field, _WIRE_END) * depth


def len_nest(field: int, depth: int, inner: bytes = b"") -> bytes:
    """``depth`` length-delimited fields one inside the other."""
    out = inner
    for _ in range(depth):
        out = tag(field, _WIRE_LEN) + varint(len(out)) + out
    return out


field_numbers = st.one_of(st.integers(1, 20), st.sampled_from([0, 536_870_911, 19_000, 1_000_000]))
big_ints = st.one_of(st.integers(0, 300), st.integers(-(2**63), 2**64 - 1))


@st.composite
def one_field(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One wire field of any type, for any field number: wrong types for known fields included."""
    field = draw(field_numbers)
    wire = draw(st.sampled_from([_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_LEN, _WIRE_I32, _WIRE_START]))
    head = tag(field, wire)
    if wire == _WIRE_VARINT:
        return head + varint(draw(big_ints))
    if wire == _WIRE_I64:
        return head + draw(st.binary(min_size=8, max_size=8))
    if wire == _WIRE_I32:
        return head + draw(st.binary(min_size=4, max_size=4))
    if wire == _WIRE_START:
        inner = draw(raw_fields(depth + 1)) if depth < 3 else b""
        return head + inner + tag(field, _WIRE_END)
    if depth < 3 and draw(st.booleans()):
        payload = draw(raw_fields(depth + 1))
    else:
        payload = draw(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode)))
    length = len(payload)
    # Sometimes a length that lies: past the end of the message, or enormous.
    length = draw(st.sampled_from([length, length, length, length + 1, 2**31, 2**63]))
    return head + varint(length) + payload


def raw_fields(depth: int = 0) -> st.SearchStrategy[bytes]:
    return st.lists(one_field(depth), max_size=6 if depth == 0 else 3).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with a few byte-level edits: truncation, flips, insertions, a lying length."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete", "dup", "huge_len", "append"]))
        at = draw(st.integers(0, len(data)))
        if op == "cut":
            del data[at:]
        elif op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and at < len(data):
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "dup":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end]
        elif op == "huge_len" and at < len(data):
            data[at : at + 1] = b"\xff\xff\xff\xff\x0f"
        elif op == "append":
            data += draw(one_field())
    return bytes(data)


def request_bytes(valid: st.SearchStrategy[Message], *, nest_field: int = 1) -> st.SearchStrategy[bytes]:
    """Every kind of input for one request type, from the strategy of its valid-ish messages."""
    serialized: st.SearchStrategy[bytes] = valid.map(_serialize)
    # Mostly well-formed messages: they reach the handlers' own checks, where the bugs are.
    return st.one_of(
        serialized,
        serialized,
        serialized,
        mutated(serialized),
        mutated(serialized),
        st.binary(max_size=300),
        raw_fields(),
        st.tuples(serialized, raw_fields()).map(b"".join),
        st.integers(1, 400).map(lambda d: group_nest(99, d)),
        st.integers(1, 200).map(lambda d: len_nest(nest_field, d)),
    )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
