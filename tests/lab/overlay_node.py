"""Run inside one lab host's network namespace (``nsenter --net``): the agent's node side of an
overlay network, driven by hand — NetworkAgent plumbs the network from the NetworkState given as
JSON, DockerExecutor creates and starts the given task on the host's engine — then serves DNS
until SIGTERM, when it removes the container and the network again.

    python overlay_node.py ENGINE NODE_ID UNDERLAY_ADDR STATE_JSON TASK_JSON

Prints ``ready <container id>`` once the container runs (or ``error <message>``).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import msgspec

from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.network.plumbing import NetworkAgent
from shoal.dispatcher.protocol import NetworkState
from shoal.models import Task


async def main(engine: str, node_id: str, underlay: str, state_json: str, task_json: str) -> None:
    state = msgspec.json.decode(state_json, type=NetworkState)
    task = msgspec.json.decode(task_json, type=Task)
    executor = DockerExecutor(engine)
    agent = NetworkAgent(engine, node_id, underlay, ready_timeout_s=30)
    executor.network = agent
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    cid = ""
    try:
        agent.apply([state], [], full=True)
        cid = await executor.create(task)
        await executor.start(task, cid)
        print(f"ready {cid}", flush=True)
        await stop.wait()
    except Exception as exc:
        print(f"error {exc}", flush=True)
    finally:
        if cid:
            await executor.remove(cid)
        agent.apply([], [state.network.ID])
        for _ in range(100):  # until the removal pass has run
            if not agent._removing:
                break
            await asyncio.sleep(0.1)
        await executor.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
