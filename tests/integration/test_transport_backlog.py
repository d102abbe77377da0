"""A manager whose event loop stalls with many agent calls queued must answer them all afterwards.

grpc.aio accepts one call per event-loop turn; the rest wait in gRPC's core. With gRPC's defaults,
more than 1,000 waiting calls are dropped at random (CANCELLED) — under a 100,000-task deploy that
cost live agents their sessions, and the manager then marked them down. The server here is a
separate process built with the manager's options (``SERVER_OPTIONS``) whose loop blocks for 3 s.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import textwrap

import grpc
from grpc import aio

from shoal.transport.rpc import CLIENT_OPTIONS
from tests.integration.transport_env import free_port_pair

SERVER = textwrap.dedent("""
    import asyncio, sys, time
    import grpc
    from grpc import aio
    from shoal.transport.rpc import SERVER_OPTIONS

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            async def unary(request, context):
                if details.method.endswith("/stall"):
                    time.sleep(3)  # the manager's loop busy with one long pass
                return b"ok"
            return grpc.unary_unary_rpc_method_handler(unary)

    async def main():
        server = aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers([Handler()])
        server.add_insecure_port("127.0.0.1:" + sys.argv[1])
        await server.start()
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


async def test_calls_queued_behind_a_stalled_loop_are_all_answered() -> None:
    port = free_port_pair()
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, str(port),
                                                  stdout=asyncio.subprocess.PIPE)
    channels = [aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS) for _ in range(100)]
    try:
        assert server.stdout is not None
        assert (await asyncio.wait_for(server.stdout.readline(), 30)).strip() == b"ready"
        await asyncio.gather(*(ch.unary_unary("/t/ping")(b"", timeout=10) for ch in channels))
        outcomes: collections.Counter[str] = collections.Counter()

        async def call(ch: aio.Channel, method: str, after: float) -> None:
            await asyncio.sleep(after)
            try:
                await ch.unary_unary(method)(b"", timeout=30)
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as e:
                outcomes[e.code().name] += 1

        # 1,500 calls (a heartbeat and reports from many nodes) arrive while the loop is stalled.
        await asyncio.gather(call(channels[0], "/t/stall", 0),
                             *(call(ch, "/t/ping", 0.5) for ch in channels for _ in range(15)))
        assert outcomes == {"ok": 1501}
    finally:
        for ch in channels:
            await ch.close()
        server.kill()
        await server.wait()
