"""``--opt encrypted`` on an overlay network: refused, with the reason, never ignored.

Docker encrypts such a network's VXLAN traffic between nodes (IPsec ESP, AES-GCM). Shoal's data
path does not encrypt (yet), and a kernel without ESP/GCM/WireGuard could not anyway; accepting the
option would send clear text where the user asked for secrecy. So a create that asks for it gets a
400 saying which nodes cannot encrypt and why (each agent probes its kernel at start and reports it
in its description: :mod:`shoal.agent.encryption`), or that no node has reported yet, or, when
every node could, that Shoal itself does not. The check runs before anything is written.
"""

from __future__ import annotations

from shoal.errors import InvalidArgument
from shoal.models import NetworkSpec, Node
from shoal.netmode import ENCRYPTION_LABEL as LABEL
from shoal.netmode import ENCRYPTION_REASON_LABEL as REASON_LABEL

ENCRYPTED_OPTION = "encrypted"  # libnetwork's overlay ``secureOption``: its presence turns encryption on
CAPABLE = ("ipsec", "wireguard")
# Whether Shoal's overlay data path encrypts. Until it does, even capable nodes cannot honour the option.
DATA_PATH_ENCRYPTS = False
_SHOWN = 5  # nodes named in the message; the rest are counted


def wants_encryption(spec: NetworkSpec) -> bool:
    opts = spec.DriverConfiguration.Options if spec.DriverConfiguration is not None else None
    return ENCRYPTED_OPTION in (opts or {})


def node_encryption(node: Node) -> tuple[str, str]:
    """(mode, reason) a node reported; ("", ...) when it has not reported."""
    labels = node.Description.Engine.Labels or {}
    mode = labels.get(LABEL, "")
    if not mode:
        return "", "has not reported whether it can encrypt"
    return mode, labels.get(REASON_LABEL, "") or ("kernel cannot encrypt VXLAN" if mode not in CAPABLE else "")


def check_encryption(spec: NetworkSpec, nodes: list[Node]) -> None:
    """400 for a network asking for ``encrypted`` that this cluster cannot encrypt (see module doc)."""
    if not wants_encryption(spec):
        return
    name = spec.Name or "the network"
    reported = [(n, *node_encryption(n)) for n in sorted(nodes, key=lambda n: n.Description.Hostname or n.ID)]
    if not any(mode for _, mode, _ in reported):
        raise InvalidArgument(
            f"cannot create encrypted network {name}: no node has reported yet whether its kernel can encrypt "
            f"VXLAN traffic (IPsec ESP with AES-GCM, or WireGuard); try again once the nodes are up, or create "
            f"it without --opt encrypted"
        )
    unable = [(n, reason) for n, mode, reason in reported if mode not in CAPABLE]
    if unable:
        parts = [f"{n.Description.Hostname or n.ID} ({reason})" for n, reason in unable[:_SHOWN]]
        if len(unable) > _SHOWN:
            parts.append(f"and {len(unable) - _SHOWN} more")
        count = "1 node" if len(unable) == 1 else f"{len(unable)} nodes"
        raise InvalidArgument(
            f"cannot create encrypted network {name}: {count} of {len(reported)} cannot encrypt VXLAN traffic: "
            f"{', '.join(parts)}; Shoal will not send its traffic in clear text, so create it without "
            f"--opt encrypted or on kernels with ESP and GCM (or WireGuard)"
        )
    if not DATA_PATH_ENCRYPTS:
        raise InvalidArgument(
            f"cannot create encrypted network {name}: every node's kernel could encrypt, but Shoal's overlay "
            f"does not encrypt VXLAN traffic yet; create it without --opt encrypted"
        )
