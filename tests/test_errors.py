"""natmap's one error tree: the drawing in errors.py is the code, every
condition has its class, and a caret is drawn only under a real span."""

import builtins
import re

import pytest

import natmap
from natmap import NatmapError, SpecError


def drawn_tree():
    """(name, parent, other bases) for every line of the tree in errors.py's docstring."""
    parents, rows = [], []
    for line in natmap.errors.__doc__.splitlines():
        found = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?(\w+)(?: \((\w+)\))?", line)
        if not found or not found.group(2).endswith("Error"):
            continue
        depth = len(found.group(1)) // 4 + (1 if "──" in line else 0)
        del parents[depth:]
        rows.append((found.group(2), parents[-1] if parents else None, found.group(3)))
        parents.append(found.group(2))
    return rows


def test_the_drawn_tree_is_the_class_tree():
    rows = drawn_tree()
    assert rows[0] == ("NatmapError", None, None) and len(rows) > 10
    for name, parent, other in rows[1:]:
        cls = getattr(natmap, name)
        assert getattr(natmap, parent) in cls.__bases__, name
        if other:
            assert issubclass(cls, getattr(builtins, other)), name


def test_every_public_error_is_drawn_and_is_a_natmap_error():
    public = {name for name in natmap.__all__
              if isinstance(getattr(natmap, name), type) and issubclass(getattr(natmap, name), Exception)}
    assert public == {name for name, _, _ in drawn_tree()}
    assert all(issubclass(getattr(natmap, name), NatmapError) for name in public)


@pytest.mark.parametrize("make", [
    lambda: natmap.NatMap(table="bad-name"),
    lambda: natmap.Endpoint("web01", "172.30.0.2", "no/slash"),
    lambda: natmap.Endpoint("web01", "127.0.0.1", "natmap0"),
    lambda: natmap.NatMap(backend="pf"),
])
def test_a_whole_value_check_quotes_the_value_without_a_caret(make):
    with pytest.raises(SpecError) as caught:
        make()
    assert len(str(caught.value).splitlines()) == 1 and "^" not in str(caught.value)
    assert caught.value.start is None and caught.value.end is None


def test_a_grammar_error_still_points_at_its_span():
    with pytest.raises(SpecError) as caught:
        natmap.PortSpec.parse("70000:80")
    assert str(caught.value).splitlines()[1:] == ["    70000:80", "    ^^^^^"]
