"""natmap.nlquery's netlink exchange, on a fake socket: a dump the kernel
marks interrupted (NLM_F_DUMP_INTR) is asked again, and never returned as if whole."""

import struct
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natmap import nlquery
from natmap.errors import BackendError
from natmap.spec import Protocol

_HEADER = struct.Struct("=IHHII")
_DONE, _INTR = 3, 0x10


class FakeNetlink:
    """Answers each request with the next dump of ``dumps``: a list of (flags of its message) per dump."""

    def __init__(self, dumps):
        self.dumps, self.asked = list(dumps), 0

    def socket(self, *args):
        return self

    def bind(self, address):
        pass

    def sendall(self, data):
        self.asked += 1
        self._flags = self.dumps.pop(0) if len(self.dumps) > 1 else self.dumps[0]

    def recv(self, size):
        body = bytes(nlquery._DIAG_MSG.size)
        message = _HEADER.pack(_HEADER.size + len(body), 20, self._flags, 1, 0) + body
        return message + _HEADER.pack(_HEADER.size + 4, _DONE, self._flags, 1, 0) + bytes(4)

    def close(self):
        pass


@pytest.fixture
def netlink(monkeypatch):
    def install(dumps):
        fake = FakeNetlink(dumps)
        module = types.SimpleNamespace(**{k: getattr(nlquery.socket, k) for k in dir(nlquery.socket) if k.isupper()})
        module.socket = fake.socket
        monkeypatch.setattr(nlquery, "socket", module)
        return fake
    return install


def test_an_interrupted_dump_is_asked_again(netlink):
    fake = netlink([_INTR, _INTR, 0])
    assert len(nlquery._ask(0, "listing sockets", 20, nlquery._F_DUMP, b"")) == 1
    assert fake.asked == 3


def test_a_dump_interrupted_every_time_is_an_error_not_a_partial_answer(netlink):
    fake = netlink([_INTR])
    with pytest.raises(BackendError, match="listing sockets: the kernel's answer was interrupted 10 times"):
        nlquery.listeners(Protocol.TCP)
    assert fake.asked == nlquery._DUMP_TRIES


def _merged_by_loop(ports):
    """The plain loop _merged replaced: what its comprehensions must give."""
    merged = []
    for first, last in sorted(ports):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])), max_size=30))
def test_merged_ranges_join_overlapping_and_adjacent_ones_as_the_plain_loop_does(ports):
    from natmap.nlquery import _merged

    assert _merged(ports) == _merged_by_loop(ports)


def test_merged_ranges_of_examples():
    from natmap.nlquery import _merged

    assert _merged([]) == []
    assert _merged([(5, 5), (1, 3), (4, 4), (7, 9), (8, 8), (11, 11)]) == [(1, 5), (7, 9), (11, 11)]
