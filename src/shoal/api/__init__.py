"""The Docker Engine API server (swarm-mode part, API 1.41) over a :class:`shoal.manager.Manager`."""

from shoal.api.app import create_app
from shoal.api.common import ManagerAPI
from shoal.api.server import serve

__all__ = ["ManagerAPI", "create_app", "serve"]
