"""The agent protocol between hosts: gRPC over mutual TLS (no protoc: msgpack-encoded protocol structs).

- :mod:`.server`: the manager's two listeners (cluster port: mutual TLS; bootstrap port: join).
- :mod:`.bootstrap`: a host joins a cluster and keeps its credentials.
- :mod:`.client`: an agent's :class:`~shoal.dispatcher.protocol.DispatcherClient` over the network.
"""

import os

# gRPC's C core logs every refused TLS handshake at INFO on stderr; refusing them is our job, not news.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
