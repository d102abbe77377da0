"""The leader's component that keeps haproxy matching the store's load-balancer and routing labels.

Why on the leader, as a process of the daemon, and not a service: there is no registry and no
haproxy image (images are built offline from busybox), while Debian's haproxy is on every host; the
leader already watches every service, task and node, so it needs no new protocol message; and the
listener follows leadership (a new leader starts its own, the old one stops its haproxy with its
components), as an Aliyun SLB in front of the cluster would be one fixed address. The cost: the
load balancers answer on the leader's host only — point DNS or a floating address at the managers.

It costs nothing while no service carries such a label: no haproxy runs. Store events are
coalesced: a burst of task updates is one recomputation and at most one reload, and a reload happens
only when the rendered config changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from shoal.lbroute.haproxy import Haproxy, HaproxyMissing
from shoal.lbroute.labels import is_routing_label, router_port
from shoal.lbroute.plan import Plan, build, render
from shoal.models import Service
from shoal.store import Action, MemoryStore

log = logging.getLogger(__name__)

RETRY_S = 2.0
LOAD_RETRY_S = 10.0  # a config haproxy could not load is tried again this often (while unchanged)
WATCHDOG_S = 5.0  # how often a dead haproxy is noticed without a store event


def bind_address() -> str:
    """``SHOAL_LB_BIND``: the address the listeners bind (all of the host's by default)."""
    return os.environ.get("SHOAL_LB_BIND", "")


def labelled(svc: Service) -> bool:
    return any(is_routing_label(k) for k in svc.Spec.Labels or ())


class LoadBalancerKeeper:
    def __init__(self, store: MemoryStore, workdir: Path, *, haproxy: Haproxy | None = None,
                 port: int | None = None, bind: str | None = None) -> None:
        self.store = store
        self.haproxy = haproxy or Haproxy(workdir)
        self.router_port = router_port() if port is None else port
        self.bind = bind_address() if bind is None else bind
        self._services: dict[str, Service] = {}  # the labelled ones, by ID
        self._applied: str | None = None
        self._unloaded: tuple[str, float] | None = None  # a config that could not load, and when
        self._missing_logged = False
        self.plan = Plan()

    async def run(self) -> None:
        watcher = self.store.watch("service", "task", "node")
        try:
            self._services = {s.ID: s for s in self.store.list("service") if labelled(s)}
            await self._sync()
            while True:
                try:
                    events = [*await asyncio.wait_for(watcher.get(), WATCHDOG_S)]
                except TimeoutError:
                    if self.plan and not self.haproxy.running:  # it died: start it again
                        if self.haproxy.error is None:  # (one that could not start said why)
                            log.warning("load balancers: haproxy is not running; starting it again")
                        self._applied = None
                    events = []
                await asyncio.sleep(0)  # let ready producers commit into this batch
                events += watcher.drain()
                dirty = False
                for e in events:
                    if e.kind == "service":
                        sid = e.obj.ID  # a delete carries the deleted object
                        if e.action is not Action.DELETE and labelled(e.obj):
                            self._services[sid] = e.obj
                            dirty = True
                        elif self._services.pop(sid, None) is not None:
                            dirty = True
                    elif e.kind == "task":
                        dirty = dirty or e.obj.ServiceID in self._services
                    else:  # a node came, went, changed state or address
                        dirty = dirty or bool(self._services)
                if dirty or self._applied is None:
                    await self._sync()
        finally:
            watcher.close()
            await self.haproxy.stop()

    async def _sync(self) -> None:
        plan = build(self.store, list(self._services.values()))
        self.plan = plan
        if not plan:
            if self.haproxy.running:
                await self.haproxy.stop()
            self._applied = ""
            return
        text = render(plan, router_port=self.router_port, bind=self.bind,
                      admin_socket=str(self.haproxy.admin_socket))
        if text == self._applied and self.haproxy.running:
            return
        now = asyncio.get_running_loop().time()
        if self._unloaded is not None and self._unloaded[0] == text and now - self._unloaded[1] < LOAD_RETRY_S:
            self._applied = None  # not yet: the watchdog tick comes back here
            return
        try:
            ok = await self.haproxy.apply(text)
        except HaproxyMissing as e:
            if not self._missing_logged:
                log.error("load balancers and routes are not served: %s", e)
                self._missing_logged = True
            self._applied = text
            return
        except OSError as e:
            log.error("load balancers: haproxy could not be started: %s; retrying in %.0f s", e, RETRY_S)
            await asyncio.sleep(RETRY_S)
            self._applied = None
            return
        self._unloaded = None
        if ok:
            self._applied = text
        elif not self.haproxy.refused:
            # It could not load (a port another process holds): tried again every LOAD_RETRY_S, as
            # the port may be free by then. A config haproxy refused is not tried again.
            self._applied = None
            self._unloaded = (text, now)
