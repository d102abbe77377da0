"""The Compose loader: v1, v2.x, v3.x and Compose Specification files → a normalised Project.

``load()`` reads, interpolates, validates (published JSON schemas, see :mod:`.schema`), extends,
merges and profile-filters; ``to_service_specs()`` maps the project to swarm ServiceSpecs.
"""

from .convert import to_service_specs
from .errors import ComposeError
from .loader import Project, load

__all__ = ["ComposeError", "Project", "load", "to_service_specs"]
