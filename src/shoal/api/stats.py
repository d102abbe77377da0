"""``GET /shoal/services/{id}/stats``: a service's tasks' current CPU, memory and network, and their
average and sum — what ``shoal service stats`` shows and what the autoscaler compares with.

The samples live in the leader's memory (dispatcher/stats.py), so a follower passes the request on
to the leader. Docker has no such route (``docker stats`` is per container and works through
/containers, relayed to the node's engine); this one answers for a service spread over the cluster.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal import controlapi
from shoal.api.auth import USER_KEY
from shoal.api.common import json_response, swarm_manager
from shoal.api.forward import to_leader
from shoal.dispatcher.protocol import TaskStats
from shoal.dispatcher.stats import usage_of
from shoal.errors import Unavailable


def task_json(s: TaskStats) -> dict[str, Any]:
    return {
        "TaskID": s.task_id, "Slot": s.slot, "NodeID": s.node_id, "ContainerID": s.container_id,
        "Read": s.at, "CPUPercent": s.cpu_percent, "CPULimitPercent": s.cpu_limit_percent,
        "MemoryBytes": s.mem_bytes, "MemoryLimitBytes": s.mem_limit_bytes,
        "NetworkRxBytes": s.net_rx_bytes, "NetworkTxBytes": s.net_tx_bytes, "Pids": s.pids,
    }


async def service_stats(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = controlapi.get_service(manager.store, request.match_info["id"])  # 404 before anything else
    if not getattr(manager, "leads", True) and getattr(manager, "leader_api", None) is not None:
        forwarded = await to_leader(request, manager, user=str(request.get(USER_KEY, "")))
        if forwarded is not None:
            return forwarded
    dispatcher = getattr(manager, "dispatcher", None)
    if dispatcher is None:
        raise Unavailable("this manager does not lead and the leader cannot be reached for the stats")
    samples = dispatcher.stats.service(svc.ID)
    usage = usage_of(samples)
    return json_response({
        "ID": svc.ID,
        "Name": svc.Spec.Name,
        "Tasks": [task_json(s) for s in samples],
        "Usage": None if usage is None else {
            "Tasks": usage.tasks, "CPUPercentAvg": round(usage.cpu_percent_avg, 3),
            "CPULimitPercentAvg": round(usage.cpu_limit_percent_avg, 3),
            "CPUPercentSum": round(usage.cpu_percent_sum, 3), "MemoryBytesAvg": int(usage.mem_bytes_avg),
            "MemoryBytesSum": usage.mem_bytes_sum, "MemoryLimitPercentAvg": round(usage.mem_limit_percent_avg, 3),
            "NetworkRxBytesSum": usage.net_rx_bytes_sum, "NetworkTxBytesSum": usage.net_tx_bytes_sum,
        },
    })
