"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import threading
import time

from deployctl.testfleet import docker as docker_fleet
from deployctl.remote import routers
from deployctl.testfleet import fleet as testfleet


def post_order(node, order: dict, timeout: float = 5.0) -> routers.Answer:
    return routers.request(node, "POST", "/orders", order, timeout=timeout)


def order(oid: str, qty: int = 250, **kw) -> dict:
    return {"id": oid, "symbol": "ACME", "side": "buy", "quantity": qty, "limit_price": 10.5, **kw}


def in_background(fn, *args, **kwargs) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    return t


def wait(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def fleet_view(ctx) -> dict[str, tuple]:
    """Every node's (current release on disk, running digest, gate, halted), read back over SSH and HTTP.

    An unreachable part reads as None, so a dead node shows up as (None, None, None, None).
    """
    from deployctl.remote import commands
    from deployctl.remote.ssh import Call

    with ctx.ssh() as f:
        probes = f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    health = routers.health(ctx.nodes)
    view = {}
    for n in ctx.nodes:
        p, h = probes[n.name], health[n.name]
        current = commands.parse_probe(p.stdout).current if p.ok else None
        view[n.name] = (current, *((h.body.get("digest"), h.body.get("gate"), h.body.get("halted")) if h.ok
                                   else (None, None, None)))
    return view


def pause(container, tries: int = 5) -> None:
    """`docker pause`, retried: with cgroup v1 the freezer may fail ("unable to freeze") while the
    container's processes are busy (forking, in a syscall); a moment later it works."""
    import docker

    for i in range(tries):
        try:
            container.pause()
            return
        except docker.errors.APIError as exc:
            if "unable to freeze" not in str(exc) or i == tries - 1:
                raise
            time.sleep(0.2)


def revive(ctx, dc, spec) -> bool:
    """Every container running, unpaused and on the fleet network; return whether all sshd answer (bounded)."""
    for n in spec.nodes:
        c = docker_fleet.container(dc, spec, n.service)
        c.reload()
        if c.status == "paused":
            c.unpause()
        elif c.status != "running":
            c.start()
        if spec.network not in c.attrs["NetworkSettings"]["Networks"]:
            dc.networks.get(spec.network).connect(c)
    return testfleet.wait_for(lambda: all(testfleet.sshd_answers(n.host, n.ssh_port) for n in ctx.nodes), 60, 0.2)
