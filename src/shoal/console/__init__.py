"""The web console: a static UI (``static/``, served by :mod:`.static_routes`) over the API, plus
the console's aggregate routes, stream and sessions (``api.py`` and siblings). See
docs/architecture.md, "Web console"."""
