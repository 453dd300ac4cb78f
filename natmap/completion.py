"""Shell completion for ``natmap``, generated from its argparse parser by shtab.

Endpoint names come from ``natmap ps -q``, table names from ``natmap
tables -q`` (natmap's tables only: marked as natmap's in the kernel, on
either backend, or kept in its store; never another program's). Imported
only by ``natmap completion``.
"""

from __future__ import annotations

import argparse

__all__ = ["script"]

# Shell functions the generated script calls: bash ones print candidates for
# the word in $1; zsh ones add them with compadd.
_PREAMBLE = {
    # Not compgen -W: it expands $(...), $VAR and globs in the words given,
    # and a name is anyone's text. Each line is compared as a string.
    "bash": """
_natmap_match() { local w; while IFS= read -r w; do if [[ -n $w && $w == "$1"* ]]; then printf '%s\\n' "$w"; fi; done; }
_natmap_endpoints() { natmap ps -q 2>/dev/null | _natmap_match "$1"; }
_natmap_tables() { natmap tables -q 2>/dev/null | _natmap_match "$1"; }
""",
    "zsh": """
_natmap_endpoints() { compadd -- ${(f)"$(natmap ps -q 2>/dev/null)"}; }
_natmap_tables() { compadd -- ${(f)"$(natmap tables -q 2>/dev/null)"}; }
""",
}
_ENDPOINT = {"bash": "_natmap_endpoints", "zsh": "_natmap_endpoints"}
_TABLE = {"bash": "_natmap_tables", "zsh": "_natmap_tables"}
_ENDPOINT_ARGUMENTS = {"name", "source", "target"}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    import shtab

    for action in _actions(parser):
        if action.dest in _ENDPOINT_ARGUMENTS:
            action.complete = _ENDPOINT  # type: ignore[attr-defined]
        elif action.dest == "table":
            action.complete = _TABLE  # type: ignore[attr-defined]
        elif action.dest == "file":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell, preamble=_PREAMBLE[shell])


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                actions += _actions(sub)
    return actions
