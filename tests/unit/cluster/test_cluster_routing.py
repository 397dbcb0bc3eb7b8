"""Holder aliases, sans-IO: another node's pids never collide with this machine's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wsgi_tracker.cluster.routing import ALIAS_BASE, HolderAliases
from wsgi_tracker.core.types import WsChange
from wsgi_tracker.sync import frames as f

PID_MAX = 1 << 22  # Linux's largest pid_max


def change(holder: int, peer: bytes = b"p" * 20) -> WsChange:
    return WsChange(b"i" * 20, peer, holder, False, 0, 1.0)


@given(st.lists(st.tuples(st.sampled_from(["a#1", "b#2", "c#3"]), st.integers(1, PID_MAX))))
def test_each_node_and_pid_gets_one_alias_above_every_pid_and_back(
    seen: list[tuple[str, int]],
) -> None:
    table = HolderAliases()
    aliases = {key: table.alias(*key, 0.0) for key in seen}
    assert all(alias >= ALIAS_BASE > PID_MAX for alias in aliases.values())
    assert len(set(aliases.values())) == len(aliases)  # the same pid on two nodes: two aliases
    for key, alias in aliases.items():
        assert table.alias(*key, 5.0) == alias
        assert table.target(alias) == key


def test_a_pid_of_this_machine_is_no_alias() -> None:
    table = HolderAliases()
    table.alias("b#2", 4242, 0.0)
    assert table.target(4242) is None


def test_localize_rewrites_holders_and_keeps_everything_else() -> None:
    table = HolderAliases()
    frame = f.WsPeers([change(10, b"x" * 20), change(11, b"y" * 20), change(10, b"z" * 20)])
    got = table.localize("b#2", frame, 0.0)
    assert [c._replace(holder=0) for c in got.changes] == [
        c._replace(holder=0) for c in frame.changes
    ]
    assert [table.target(c.holder) for c in got.changes] == [("b#2", 10), ("b#2", 11), ("b#2", 10)]


def test_a_node_departs_only_when_unlisted_past_the_grace_and_is_then_forgotten() -> None:
    table = HolderAliases()
    a = table.alias("a#1", 7, now=100.0)
    table.alias("b#2", 7, now=105.0)
    assert table.departed({"a#1"}, now=110.0, after=10.0) == []  # b is new: not listed yet
    assert table.departed({"b#2"}, now=111.0, after=10.0) == ["a#1"]
    assert table.forget("a#1") == [a]
    assert table.target(a) is None
    assert table.departed({"b#2"}, now=200.0, after=10.0) == []
    assert table.alias("a#1", 7, now=201.0) != a  # back under the same id: a new alias
