"""The control API: swarm-mode domain logic over the store, independent of HTTP.

Each function validates its input completely before it opens a transaction, so a request that fails
never changes stored state. Errors are :mod:`shoal.errors` subclasses carrying Docker's status and,
where Swarm mode's messages come from swarmkit, its ``rpc error: code = ... desc = ...`` wording.
"""

from shoal.controlapi.cluster import inspect_cluster, update_cluster
from shoal.controlapi.filters import Filters, parse_filters
from shoal.controlapi.networks import (
    create_network,
    get_network,
    list_networks,
    prune_networks,
    remove_network,
    resolve_service_networks,
)
from shoal.controlapi.nodes import list_nodes, remove_node, update_node
from shoal.controlapi.resolve import get_node, get_service, get_task
from shoal.controlapi.secrets import (
    create_config,
    create_secret,
    get_config,
    get_secret,
    list_configs,
    list_secrets,
    remove_config,
    remove_secret,
    resolve_service_references,
    update_config,
    update_secret,
)
from shoal.controlapi.services import (
    create_service,
    list_services,
    remove_service,
    service_status,
    update_service,
)
from shoal.controlapi.tasks import list_tasks, task_up_to_date

__all__ = [
    "Filters",
    "create_config",
    "create_network",
    "create_secret",
    "create_service",
    "get_config",
    "get_network",
    "get_node",
    "get_secret",
    "get_service",
    "get_task",
    "inspect_cluster",
    "list_configs",
    "list_networks",
    "list_nodes",
    "list_secrets",
    "list_services",
    "list_tasks",
    "parse_filters",
    "prune_networks",
    "remove_config",
    "remove_network",
    "remove_node",
    "remove_secret",
    "remove_service",
    "resolve_service_networks",
    "resolve_service_references",
    "service_status",
    "task_up_to_date",
    "update_cluster",
    "update_config",
    "update_node",
    "update_secret",
    "update_service",
]
