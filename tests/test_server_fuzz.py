"""Malformed and random frames thrown at one mock VAST server process: it must keep serving."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membrane_py.vastapi.protocol import (
    Cmd,
    Grouped,
    ProtocolError,
    Tag,
    Value,
    decode_values,
    encode_request,
    error_code_of,
    request_header,
)
from mock_vast_server.launch import raw_request, reply_or_close, send_and_close

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda v: Value(Tag.UINT32, v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: Value(Tag.INT32, v)),
    st.floats(allow_nan=True).map(lambda v: Value(Tag.DOUBLE, v)),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20)
    .map(lambda v: Value(Tag.TEXT, v)),
    st.binary(max_size=64).map(lambda v: Value(Tag.BLOCK, v)),
)
commands = st.one_of(st.sampled_from([int(c) for c in Cmd]), st.integers(0, 2**32 - 1))


def assert_alive(server) -> None:
    with contextlib.closing(server.connect(timeout=10)) as s:
        ok, payload = raw_request(s, Cmd.GETINFO)
    assert ok
    assert Grouped.of(decode_values(payload)).uints[:3] == [256, 256, 8]


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(vast_server, data):
    send_and_close(vast_server, data)
    assert_alive(vast_server)


@FUZZ
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 64)), tail=st.binary(max_size=64))
def test_valid_magic_with_any_length(vast_server, length, tail):
    send_and_close(vast_server, b"VAST" + struct.pack("<Q", length) + tail)
    assert_alive(vast_server)


@FUZZ
@given(cmd=commands, params=st.lists(values, max_size=10))
def test_random_commands_and_parameters(vast_server, cmd, params):
    with contextlib.closing(vast_server.connect(timeout=30)) as s:
        s.sendall(encode_request(cmd, params))
        reply_or_close(s)
    assert_alive(vast_server)


@FUZZ
@given(cmd=commands, body=st.binary(max_size=200))
def test_random_parameter_bytes(vast_server, cmd, body):
    try:
        decode_values(body)
        well_formed = True
    except ProtocolError:
        well_formed = False
    with contextlib.closing(vast_server.connect(timeout=30)) as s:
        s.sendall(request_header(cmd, len(body)) + body)
        if well_formed:
            reply_or_close(s)
        else:  # a truncated value closes the connection without a reply
            assert s.recv(1) == b""
    assert_alive(vast_server)


@FUZZ
@given(cmd=commands, params=st.lists(values, max_size=6), cut=st.integers(0, 200))
def test_truncated_frames(vast_server, cmd, params, cut):
    frame = encode_request(cmd, params)
    send_and_close(vast_server, frame[: min(cut, len(frame) - 1)])
    assert_alive(vast_server)


def _param(tag: str) -> st.SearchStrategy[Value]:
    small = st.one_of(st.integers(0, 300), st.sampled_from([0, 1, 255, 256, 2**31, 2**32 - 1]))
    return {
        "u": small.map(lambda v: Value(Tag.UINT32, v)),
        "i": st.integers(-2, 300).map(lambda v: Value(Tag.INT32, v)),
        "d": st.floats(allow_nan=True).map(lambda v: Value(Tag.DOUBLE, v)),
        "t": st.sampled_from(["", "x", "/nonexistent.vsvi", "name"]).map(
            lambda v: Value(Tag.TEXT, v)),
        "b": st.binary(max_size=600).map(lambda v: Value(Tag.BLOCK, v)),
    }[tag]


def _well_typed() -> st.SearchStrategy[tuple[int, list[Value]]]:
    from mock_vast_server.commands import HANDLERS

    pairs = [(cmd, sig) for cmd, e in HANDLERS.items() for sig in e.signatures]
    return st.sampled_from(pairs).flatmap(
        lambda p: st.tuples(st.just(p[0]), st.tuples(*(_param(c) for c in p[1])).map(list)))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_well_typed())
def test_well_typed_commands_with_random_values(vast_server, request):
    """Every implemented command with random values of the right types: a reply, never a crash."""
    cmd, params = request
    with contextlib.closing(vast_server.connect(timeout=30)) as s:
        ok, payload = raw_request(s, cmd, params)
        if not ok:
            assert error_code_of(payload) != 5, f"internal error on {cmd} {params}"
    assert_alive(vast_server)
