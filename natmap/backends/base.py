"""The seam between the engine and the packet filter.

:class:`Backend` is the contract: exactly what ``natmap.engine`` asks of a
backend, and all the engine knows of one. ``nft`` (``NftBackend``) and
``iptables`` (``IptablesBackend``) implement it against the kernel;
:class:`FakeBackend` holds the table in memory, for tests of the engine that
need no root (as knftables' ``Fake`` does for its ``Interface``)::

    nm = NatMap(backend=FakeBackend(), host=FakeHost([bridge]), lock_dir=tmp)

This module imports ``typing``; the engine and the real backends import it
for type checkers only, so a ``natmap`` command never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Protocol, TypeAlias

from ..errors import BackendError
from ..model import Change, Item, Table, describe

__all__ = ["Backend", "FakeBackend", "Generation"]

Generation: TypeAlias = Hashable
"""Which commit of the packet filter the table was last seen at: opaque, to
compare with ``==`` only. nftables' ruleset generation (an ``int``) on nft,
natmap's marker rule (a ``str``) on iptables, ``None`` when it is not known."""


class Backend(Protocol):
    """What the engine asks of a packet-filter backend.

    Every call acts in the calling thread's network namespace (the engine
    enters the NatMap's own before it calls). Errors are natmap's:
    :class:`~natmap.BackendError`, :class:`~natmap.PrivilegeError`.
    """

    name: str
    """The backend's name as ``NatMap.backend_name`` reports it: ``nft``, ``iptables``."""

    def generation(self) -> Generation:
        """Which commit the table is at now; it changes with every committed
        transaction, whoever commits it."""
        ...

    counts_every_commit: bool
    """Whether :meth:`generation` moves with every commit, anyone's (nft's
    counter), so that an unchanged one proves the kernel as natmap left it;
    False when it moves with natmap's commits only (iptables' marker rule)."""

    claimed: bool
    """Set by the engine: natmap's store remembers this table, so natmap's
    objects without their marker (flushed, half made) are still natmap's."""

    lock_timeout: float
    """Set by the engine from ``NatMap(lock_timeout=)``: the longest wait, in
    seconds, for a lock the packet filter's own tools share (iptables:
    ``/run/xtables.lock``); nft has none."""

    def read(self, foreign: list[str] | None = None) -> Table | None:
        """The table as the kernel holds it now, or None if there is none; what
        natmap did not write is described in ``foreign``, never read."""
        ...

    def inspect(self) -> tuple[Table | None, list[str], list[str]]:
        """From one read: the table (None if missing), its structure's
        problems (:meth:`structure_problems`) and what natmap did not write
        in it (as ``read``'s ``foreign``)."""
        ...

    def apply(self, change: Change, *, create: bool = False, generation: Generation = None) -> Generation:
        """Commit ``change`` as one transaction (all of it or none of it); with
        ``create``, make the table first, in the same transaction.
        ``generation`` is the one the engine last saw. Returns the generation
        to expect now if nothing else committed meanwhile."""
        ...

    def text(self, change: Change, *, create: bool = False) -> str:
        """What :meth:`apply` would commit, as text a person (or the backend's
        tool) reads. Nothing is applied."""
        ...

    def structure_problems(self) -> list[str]:
        """natmap's own chains, maps, sets and rules that are missing or changed."""
        ...

    def rebuild(self, items: Iterable[Item]) -> None:
        """Replace the table with a fresh one holding ``items``."""
        ...

    def take_back(self) -> None:
        """Make natmap's marker whole again on a table whose marker was removed
        by hand, if what the table holds proves it natmap's (``adopt --force``);
        raise :class:`~natmap.ConflictError`, changing nothing, if it does not.
        Nothing to do without a table, or with the marker in place."""
        ...

    def delete(self) -> None:
        """Remove the table and everything in it."""
        ...

    def close(self) -> None:
        """Release what the backend keeps open (sockets); the table stays."""
        ...


# What the next call of a FakeBackend method does first: raise the exception,
# or call the function (another writer, say) and go on.
_Action = BaseException | Callable[[], object]


class FakeBackend:
    """A :class:`Backend` holding its table in memory.

    - ``items``: the table (``None``: there is none; give a list to start
      with a table);
    - :meth:`generation` counts commits: every apply, rebuild and delete,
      and every :meth:`commit_elsewhere` or :meth:`bump`, which play another
      program (or NatMap) committing meanwhile;
    - ``last_change`` and ``last_text``: what the last :meth:`apply`
      committed, as knftables' ``LastTransaction``; ``applied``: every change
      committed, in order; :meth:`dump`: the whole table as text;
    - ``fail_next("apply")``: the next call of that method raises (a
      :class:`~natmap.BackendError` unless given another); ``before_next(
      "read", fn)``: the next call runs ``fn`` first;
    - ``structure`` and ``foreign``: what :meth:`structure_problems` and
      :meth:`read` report (a rebuild clears them);
    - ``events``: the name of every call, in order (share one list with a
      ``FakeHost`` to see the order of both).

    Like the kernel, it refuses (BackendError) to delete what is not there
    and to change a table that does not exist, and applies nothing then.
    """

    name = "fake"
    counts_every_commit = True
    claimed = False
    lock_timeout = 30.0

    def __init__(self, items: Iterable[Item] | None = None, *, events: list[str] | None = None) -> None:
        self.items: set[Item] | None = None if items is None else set(items)
        self.commits = 0
        self.last_change: Change | None = None
        self.last_text = ""
        self.applied: list[Change] = []
        self.structure: list[str] = []  # what structure_problems() reports
        self.foreign: list[str] = []    # what read() reports as not natmap's
        self.closed = False
        self.events = [] if events is None else events
        self._next: dict[str, list[_Action]] = {}

    # --- for tests ----------------------------------------------------------------

    def fail_next(self, method: str = "apply", error: BaseException | None = None) -> None:
        """Make the next call of ``method`` raise ``error`` (default: a BackendError)."""
        self._next.setdefault(method, []).append(error or BackendError(f"fake: {method} failed"))

    def before_next(self, method: str, action: Callable[[], object]) -> None:
        """Run ``action`` at the start of the next call of ``method``."""
        self._next.setdefault(method, []).append(action)

    def commit_elsewhere(self, add: Iterable[Item] = (), delete: Iterable[Item] = ()) -> None:
        """Another writer commits: the table changes (it is made if missing)
        and the generation moves on."""
        items = set() if self.items is None else self.items
        items.difference_update(delete)
        items.update(add)
        self.items = items
        self.bump()

    def bump(self) -> None:
        """A commit that did not touch this table: only the generation moves on."""
        self.commits += 1

    def dump(self) -> str:
        """The whole table, one item a line, sorted (empty if there is none)."""
        return "\n".join(sorted(map(describe, self.items or ())))

    # --- the Backend --------------------------------------------------------------

    def generation(self) -> Generation:
        self._call("generation")
        return self.commits

    def read(self, foreign: list[str] | None = None) -> Table | None:
        self._call("read")
        if foreign is not None and self.items is not None:
            foreign += self.foreign
        return None if self.items is None else Table(self.items)

    def inspect(self) -> tuple[Table | None, list[str], list[str]]:
        foreign: list[str] = []
        table = self.read(foreign)
        return table, ([] if table is None else self.structure_problems()), foreign

    def apply(self, change: Change, *, create: bool = False, generation: Generation = None) -> Generation:
        self._call("apply")
        if self.items is None and not create:
            raise BackendError("fake: the table does not exist")
        items = set() if self.items is None else set(self.items)
        for item in change.delete:
            if item not in items:
                raise BackendError(f"fake: cannot delete what is not there: {describe(item)}")
            items.remove(item)
        items.update(change.add)
        self.items = items
        self.last_change, self.last_text = change, self.text(change, create=create)
        self.applied.append(change)
        self.commits += 1
        return self.commits

    def text(self, change: Change, *, create: bool = False) -> str:
        lines = ["create table"] if create else []
        lines += [f"- {describe(item)}" for item in change.delete]
        lines += [f"+ {describe(item)}" for item in change.add]
        return "".join(line + "\n" for line in lines)

    def structure_problems(self) -> list[str]:
        self._call("structure_problems")
        return list(self.structure)

    def rebuild(self, items: Iterable[Item]) -> None:
        self._call("rebuild")
        self.items = set(items)
        self.structure, self.foreign = [], []
        self.commits += 1

    def take_back(self) -> None:
        self._call("take_back")  # the fake's table has no marker to lose: fail_next plays a foreign one

    def delete(self) -> None:
        self._call("delete")
        if self.items is None:
            raise BackendError("fake: the table does not exist")
        self.items = None
        self.commits += 1

    def close(self) -> None:
        self.closed = True

    def _call(self, method: str) -> None:
        self.events.append(f"backend.{method}")
        actions = self._next.get(method)
        if actions:
            action = actions.pop(0)
            if isinstance(action, BaseException):
                raise action
            action()
