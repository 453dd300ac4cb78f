"""What kernel tests do to and read from the kernel besides natmap's API.

The rules are not restated here: a binding is deleted behind natmap's back
with the very text its backend writes for deleting it.
"""

import re
import shlex

from natmap.backends.iptables import Layout
from natmap.backends.nft import change_text
from natmap.model import Change

# The sandbox's iptables speak the legacy xtables interface, as python-iptables does.
_LEGACY = {"iptables": "iptables-legacy", "ip6tables": "ip6tables-legacy"}


def kernel_state(sb, backend, table="natmap"):
    """Everything natmap may have touched, as text: equal texts, equal kernels."""
    if backend == "nft":
        return sb.host.run(["nft", "-j", "list", "table", "inet", table]).stdout
    saved = "".join(sb.host.run([tool]).stdout for tool in ("iptables-legacy-save", "ip6tables-legacy-save"))
    return re.sub(r"\[\d+:\d+\]|^#.*$", "", saved, flags=re.M)  # counters and timestamps change


def delete_behind_natmaps_back(sb, backend, binding, table="natmap"):
    """Remove one binding's rule the way a careless admin would: with the
    backend's own command for deleting it, run by the command-line tool."""
    change = Change(delete=(binding,))
    if backend == "nft":
        sb.host.run(["nft", "-f", "-"], input=change_text(table, change), check=True)
        return
    for line in Layout(table).text(change).splitlines():
        tool, *args = shlex.split(line)
        sb.host.run([_LEGACY[tool], *args], check=True)


def wipe(sb, backend):
    """What `nft flush ruleset` or `iptables -F` does to natmap's rules."""
    if backend == "nft":
        sb.host.run(["nft", "flush", "ruleset"], check=True)
    else:
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            sb.host.run([tool, "-t", "nat", "-F", "NATMAP-DNAT"], check=True)
