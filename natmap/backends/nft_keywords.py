"""The words nftables' scanner reads as keywords where natmap writes a table
name (``add table inet NAME``, ``list table inet NAME``): such a name fails to
parse, so natmap refuses it up front.

Taken from nftables' ``src/scanner.l`` (git tags v1.0.6, Debian 12's, and
the 2026-02 master, de904e22): every word it matches outside start
conditions (so everywhere) plus those of ``SCANSTATE_CMD_LIST`` (the state
``list`` enters). Checked against libnftables 1.0.6: each word of 1.0.6 in
this list fails there as a table name, and the words the scanner knows only
in other states (``filter``, ``nat``, ``name``, ...) work.
"""

KEYWORDS = frozenset("""
    accept add ah all and arp bridge cgroup chain chains comment comp constant continue
    counter counters cpu create ct day dccp define delete describe destroy device devices
    dnat drop dst dup dynamic ecn element elements eq esp ether exists expires export exthdr
    fib flags flow flowtable flowtables flush frag fwd ge geneve get goto gre gretap gt
    handle hbh hook hooks hour ibriport ibrname icmp icmpv6 igmp iif iifgroup iifname
    iiftype import include index inet insert interval ip ip6 ipsec jhash jump last le limit
    limits list log lshift lt map maps mark masquerade meta meter meters mh missing monitor
    ne netdev nftrace not notrack numgen obriport obrname offload oif oifgroup oifname
    oiftype or osf pkttype policy position priority queue quota quotas random redefine
    redirect reject rename replace reset return rshift rt rt0 rt2 rtclassid rule rules
    ruleset sctp secmark secmarks set sets size skgid skuid snat socket srh symhash synproxy
    synproxys table tables tcp th time timeout tproxy tunnel tunnels type typeof udp udplite
    undefine update vlan vmap vni vxlan xor xt
""".split())
