"""The Compose loader: v1, v2.x, v3.x and Compose Specification files → a normalised Project.

``load()`` reads, interpolates, validates (published JSON schemas, see :mod:`.schema`), extends,
merges and profile-filters; ``to_stack()`` maps the project to what a stack deploy creates
(service, network, secret and config specs, start order); ``normalised()`` is the merged model,
close to ``docker-compose config``.
"""

from .convert import to_service_specs, to_stack, to_stack_spec
from .errors import ComposeError
from .loader import Project, load
from .normalise import normalised
from .stack import StackResources

__all__ = ["ComposeError", "Project", "StackResources", "load", "normalised", "to_service_specs", "to_stack",
           "to_stack_spec"]
