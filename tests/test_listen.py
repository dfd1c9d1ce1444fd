"""The listening sockets `cumulo serve` opens before it loads anything."""

from __future__ import annotations

import socket

import pytest

from cumulo.errors import CumuloError
from cumulo.listen import listen


def close(sockets: list[socket.socket]) -> None:
    for s in sockets:
        s.close()


def test_a_port_in_use_is_named_with_the_ways_out() -> None:
    first = listen("127.0.0.1", 0)
    port = first[0].getsockname()[1]
    try:
        with pytest.raises(CumuloError) as taken:
            listen("127.0.0.1", port)
        assert taken.value.message == (
            f"127.0.0.1:{port} is already in use (another cumulo serve?): choose another port "
            "with --port PORT or the CUMULO_PORT environment variable"
        )
    finally:
        close(first)
    close(listen("127.0.0.1", port))  # free again once closed (SO_REUSEADDR: no wait)


def test_it_listens_at_once() -> None:
    sockets = listen("127.0.0.1", 0)
    try:
        # A client connects before any server runs (queued by the kernel, served later).
        with socket.create_connection(sockets[0].getsockname()[:2], timeout=5):
            pass
        assert sockets[0].get_inheritable()  # for uvicorn's worker processes
    finally:
        close(sockets)


def test_every_address_of_a_name_gets_the_same_port() -> None:
    sockets = listen("localhost", 0)
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
        assert {s.family for s in sockets} <= {socket.AF_INET, socket.AF_INET6}
    finally:
        close(sockets)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "192.0.2.1",
            "cannot listen on 192.0.2.1:8999: no interface of this machine has that address",
        ),
        ("no-such-host.invalid", "cannot listen on no-such-host.invalid:8999: "),
    ],
)
def test_other_failures_name_the_address(host: str, message: str) -> None:
    with pytest.raises(CumuloError) as failed:
        listen(host, 8999)
    assert failed.value.message.startswith(message)
