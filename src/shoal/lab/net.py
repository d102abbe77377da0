"""The lab's network: a bridge in the root namespace and, per host, a network namespace joined to
it by a veth pair, plus a UTS namespace so each host has its own hostname.

Done with iproute2 and util-linux commands (the same ones an operator would type to look at it).
Traffic stays between the lab's addresses: three tagged iptables rules let the hosts reach each
other and the bridge address (the machine's dockerd sets FORWARD to DROP, and bridged frames go
through iptables here) and drop whatever a host would send anywhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
from pathlib import Path

from shoal.lab.errors import LabError
from shoal.lab.state import BRIDGE, GATEWAY, NETNS_PREFIX, HostState

log = logging.getLogger(__name__)

COMMENT = "shoal-lab"
FIREWALL: list[tuple[str, list[str]]] = [
    ("FORWARD", ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]),
    ("FORWARD", ["-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"]),
    ("INPUT", ["-i", BRIDGE, "-j", "ACCEPT"]),
]
_LAB_NAME = re.compile(rf"^{re.escape(NETNS_PREFIX)}\d+$")


async def run(*argv: str, check: bool = True) -> str:
    """Run a short command; its stderr becomes the error message if it fails."""
    p = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await p.communicate()
    if check and p.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` failed: {err.decode(errors='replace').strip() or p.returncode}")
    return out.decode(errors="replace")


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def link_up(name: str) -> bool | None:
    """Administrative state of a link in the root namespace (None: no such link)."""
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & 0x1)  # IFF_UP
    except (OSError, ValueError):
        return None


def bridge_owner() -> str | None:
    """The state dir of the lab that made the bridge (kept in the bridge's alias), if there is one."""
    try:
        return Path(f"/sys/class/net/{BRIDGE}/ifalias").read_text().strip() or None
    except OSError:
        return None


async def create_bridge(owner: str) -> None:
    await run("ip", "link", "add", BRIDGE, "type", "bridge")
    await run("ip", "link", "set", BRIDGE, "alias", owner)
    await run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    await run("ip", "link", "set", BRIDGE, "up")
    for chain, rule in FIREWALL:
        await run("iptables", "-w", "-I", chain, "1", *rule, "-m", "comment", "--comment", COMMENT)


async def create_host(h: HostState) -> None:
    """Network namespace with eth0 = 10.77.0.N/24 and a default route via the bridge; own hostname."""
    ns = ("ip", "-n", h.netns)
    await run("ip", "netns", "add", h.netns)
    await run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
    await run("ip", "link", "set", h.veth, "master", BRIDGE, "up")
    await run(*ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
    await run(*ns, "link", "set", "lo", "up")
    await run(*ns, "link", "set", "eth0", "up")
    await run(*ns, "route", "add", "default", "via", GATEWAY)
    await spread_packet_work(h)
    # dockerd reports its hostname as the node's name: give each host its own (a persistent UTS
    # namespace bound on a file, entered with nsenter like the network namespace).
    await asyncio.to_thread(Path(h.uts_path).touch)
    await run("unshare", f"--uts={h.uts_path}", "hostname", h.name)


async def spread_packet_work(h: HostState) -> None:
    """Receive packet steering on both ends of the host's link, over every CPU. A packet sent into a
    veth is processed on the sending CPU; without this, the packet work of all lab hosts piles up on
    one core of this one machine (while separate hosts would each have their own), and a path
    through more hosts is charged to whoever shares that core. Best effort: a kernel without RPS
    runs the lab as before."""
    mask = format((1 << (os.cpu_count() or 1)) - 1, "x")
    for argv in (("sh", "-c", f"echo {mask} > /sys/class/net/{h.veth}/queues/rx-0/rps_cpus"),
                 ("ip", "netns", "exec", h.netns, "sh", "-c",
                  f"echo {mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus")):
        try:
            await run(*argv)
        except LabError as e:
            log.info("lab: no receive packet steering on %s: %s", h.name, e)
            return


def operstate(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    except OSError:
        return "missing"


async def set_link(h: HostState, up: bool) -> None:
    """Set the host side of the host's veth up or down, and return once the link *is* so: the kernel
    reports carrier changes up to a second late, and a restored host must be reachable on return."""
    if not link_exists(h.veth):
        raise LabError(f"{h.name}: its link {h.veth} does not exist")
    await run("ip", "link", "set", h.veth, "up" if up else "down")
    want = "up" if up else "down"
    for _ in range(100):
        # Both ends: until the kernel has seen the carrier come back on the host's own eth0 too, that
        # side still drops what the host sends.
        if operstate(h.veth) == want and (not up or await peer_operstate(h) == "up"):
            return
        await asyncio.sleep(0.05)
    raise LabError(f"{h.name}: link {h.veth} is {operstate(h.veth)}, not {want}, 5s after setting it {want}")


async def peer_operstate(h: HostState) -> str:
    """Operational state of eth0 inside the host's namespace ("up", "lowerlayerdown" ...)."""
    out = await run("ip", "-n", h.netns, "-br", "link", "show", "dev", "eth0", check=False)
    words = out.split()
    return words[1].lower() if len(words) > 1 else "missing"


async def forget_neighbours(h: HostState, hosts: list[HostState]) -> None:
    """After a cut: drop the ARP entries that went bad meanwhile (the host's own, and the others'
    for it). Left alone, an entry stuck in INCOMPLETE delays replies by up to a second."""
    await run("ip", "-n", h.netns, "neigh", "flush", "dev", "eth0", check=False)
    for other in hosts:
        if other is not h:
            await run("ip", "-n", other.netns, "neigh", "flush", "to", h.addr, check=False)


def lab_netns() -> list[str]:
    """Lab namespaces that exist, whoever's state dir made them (``down`` removes them all)."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if _LAB_NAME.match(n))
    except FileNotFoundError:
        return []


def lab_links() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if _LAB_NAME.match(n) or n == BRIDGE)
    except FileNotFoundError:
        return []


async def remove_firewall() -> None:
    for chain in sorted({c for c, _ in FIREWALL}):
        listing = await run("iptables", "-w", "-S", chain, check=False)
        for line in listing.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and COMMENT in words and "--comment" in words:
                await run("iptables", "-w", "-D", *words[1:], check=False)


async def teardown() -> list[str]:
    """Remove every lab namespace, link and firewall rule; returns what could not be removed."""
    problems: list[str] = []
    for name in lab_netns():
        try:
            await run("ip", "netns", "del", name)
        except LabError as e:
            problems.append(str(e))
    # A veth goes with its namespace once no process holds the namespace; the bridge stays.
    for name in lab_links():
        if link_exists(name):
            try:
                await run("ip", "link", "del", name)
            except LabError as e:
                if link_exists(name):
                    problems.append(str(e))
    await remove_firewall()
    return problems
