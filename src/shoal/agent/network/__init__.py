"""Overlay networks on a node: engine bridge + VXLAN per network (overlay.py), the node's DNS
responder for service names (dns.py), and the agent glue that keeps both as the manager wants and
puts task containers on them (plumbing.py)."""

from shoal.agent.network.plumbing import NetworkAgent

__all__ = ["NetworkAgent"]
