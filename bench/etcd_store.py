#!/usr/bin/env python3
"""The etcd store's throughput: persist 100,000 running tasks, then load them back.

For one managed member and for a 3-member cluster on loopback (each member its own data dir on
disk, so every transaction is fsynced by a quorum), the tasks are persisted as store batches of
``--batch`` tasks (what an orchestrator or scheduler pass writes), each cut into etcd transactions
by the backend's limits (``--max-ops``/``--max-bytes``; a managed member accepts these), then loaded
back with the paginated load. The tasks are the orchestrator's own (``new_task`` from a realistic
service), running, on a node, with a container and a network attachment: about 1 KB each.

Usage: bench/etcd_store.py [--objects 100000] [--batch 1000] [--members 1,3] [--max-ops 4096]
Prints per configuration:
  etcd_store: members=N objects=100000 persist_s=... objects_per_s=... load_s=...
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from shoal.models import ContainerStatus, Network, NetworkAttachment, Service, TaskState, Version  # noqa: E402
from shoal.orchestrator.task import new_task  # noqa: E402
from shoal.store.etcd import EtcdBackend  # noqa: E402
from shoal.store.etcdproc import ManagedEtcd  # noqa: E402

SERVICE = {
    "ID": "p8d2jq3m1v0c9x7a6s5f4g3h2", "Version": {"Index": 12},
    "CreatedAt": "2026-12-01T10:00:00.000000000Z", "UpdatedAt": "2026-12-01T10:00:00.000000000Z",
    "Spec": {
        "Name": "shop_web", "Labels": {"com.docker.stack.namespace": "shop", "tier": "front"},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "registry.local/shop/web:2.14.1@sha256:" + "ab" * 32,
                              "Env": ["MODE=production", "WORKERS=4", "DB_HOST=shop_db"],
                              "Labels": {"com.docker.stack.namespace": "shop"}},
            "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 268_435_456}},
            "RestartPolicy": {"Condition": "any", "MaxAttempts": 0},
            "Placement": {"Constraints": ["node.role==worker"]},
            "Networks": [{"Target": "n4t8w0rk1d", "Aliases": ["web"]}],
        },
        "Mode": {"Replicated": {"Replicas": 100_000}},
        "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]},
    },
    "Endpoint": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}],
                 "VirtualIPs": [{"NetworkID": "n4t8w0rk1d", "Addr": "10.0.1.2/16"}]},
}
NETWORK = {
    "ID": "n4t8w0rk1d", "Version": {"Index": 3}, "CreatedAt": "2026-12-01T09:59:00Z",
    "UpdatedAt": "2026-12-01T09:59:00Z",
    "Spec": {"Name": "shop_default", "DriverConfiguration": {"Name": "overlay"},
             "Labels": {"com.docker.stack.namespace": "shop"}},
    "DriverState": {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"}},
}


def tasks(n: int) -> list[tuple[str, Any]]:
    svc = msgspec.convert(SERVICE, Service)
    net = msgspec.convert(NETWORK, Network)
    out = []
    for i in range(n):
        t = new_task(svc, slot=i + 1, node_id=f"node{i % 1000:04d}qwertyuiopasdfg")
        t.Version = Version(7)
        t.Status.State = TaskState.RUNNING
        t.Status.Message = "started"
        t.Status.ContainerStatus = ContainerStatus(ContainerID=f"{i:064x}", PID=4000 + i % 30000)
        t.NetworksAttachments = [NetworkAttachment(Network=net, Addresses=[f"10.0.{i // 250 % 256}.{i % 250 + 3}/16"])]
        out.append(("task", t))
    return out


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def run(members: int, objs: list[tuple[str, Any]], batch: int, max_ops: int, max_bytes: int) -> str:
    with tempfile.TemporaryDirectory(prefix="etcd-bench-", dir="/var/tmp") as tmp:
        ports = free_ports(2 * members)
        peers = {f"m{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(members)}
        ms = [ManagedEtcd(name, Path(tmp) / name, f"http://127.0.0.1:{ports[2 * i]}", peers[name],
                          initial_cluster=peers, max_txn_ops=max(max_ops, 128), max_request_bytes=max_bytes)
              for i, name in enumerate(peers)]
        try:
            for m in ms:
                m.spawn()
            await asyncio.gather(*(m.wait_healthy(30) for m in ms))
            backend = EtcdBackend.from_endpoints([m.client_url for m in ms], max_ops=max_ops, max_bytes=max_bytes,
                                                 timeout_s=30)
            try:
                t0 = time.perf_counter()
                for rev, start in enumerate(range(0, len(objs), batch), 1):
                    await backend.persist(rev, objs[start:start + batch], [])
                persist_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                snap = await backend.load()
                load_s = time.perf_counter() - t0
                if len(snap.objects["task"]) != len(objs) or snap.bad:
                    raise SystemExit(f"etcd_store: loaded {len(snap.objects['task'])} tasks, {len(snap.bad)} bad")
            finally:
                await backend.close()
        finally:
            for m in ms:
                m.stop()
    return (f"etcd_store: members={members} objects={len(objs)} persist_s={persist_s:.2f} "
            f"objects_per_s={len(objs) / persist_s:.0f} load_s={load_s:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="tasks per store batch (persist call)")
    ap.add_argument("--members", default="1,3")
    ap.add_argument("--max-ops", type=int, default=4096, help="etcd ops per transaction")
    ap.add_argument("--max-bytes", type=int, default=8 * 1024 * 1024, help="bytes per etcd transaction")
    args = ap.parse_args()
    objs = tasks(args.objects)
    size = sum(len(msgspec.msgpack.encode(o)) for _, o in objs[:1000]) / min(1000, len(objs))
    print(f"task size: {size:.0f} bytes encoded; batch={args.batch} max_ops={args.max_ops} "
          f"max_bytes={args.max_bytes}", flush=True)
    for n in (int(x) for x in args.members.split(",")):
        print(asyncio.run(run(n, objs, args.batch, args.max_ops, args.max_bytes)), flush=True)


if __name__ == "__main__":
    main()
