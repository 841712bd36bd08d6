"""The end-to-end ring's rig, beside conftest.py's fixtures: the fleet's files, the CLI as a process, the
journal read back, a phase hook, the observer wrapper and two controllers racing.

Test modules import these names from here, never from conftest: with a conftest.py in each ring,
the module name `conftest` is whichever of them pytest loaded last.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployctl import api
from deployctl.errors import ExitCode
from deployctl.remote import routers
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleet as testfleet

ROOT = Path(__file__).resolve().parents[2]
# The fleet the suite runs on: the committed one, or another (scripts/test.sh runs half of the
# suite on a second fleet of its own, with DEPLOYCTL_INVENTORY and DEPLOYCTL_COMPOSE pointing at it).
INVENTORY = Path(os.environ.get("DEPLOYCTL_INVENTORY") or ROOT / "fleet" / "fleet.yaml")
COMPOSE = Path(os.environ.get("DEPLOYCTL_COMPOSE") or ROOT / "containers" / "compose.yaml")
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")


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


# ---- the CLI as a process, and the controller journal it writes --------------------------------------

def env_of(ctx) -> dict:
    """This process's environment, with DEPLOYCTL_STATE set to ctx's state folder."""
    return {**os.environ, "DEPLOYCTL_STATE": str(ctx.state_dir)}


def cli(ctx, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `deployctl ARGS...` on ctx's state folder and wait for it."""
    return subprocess.run([DCTL, *args], cwd=ROOT, env=env_of(ctx), capture_output=True, text=True, timeout=timeout)


def cli_rollout(state_dir: Path, art) -> subprocess.Popen:
    """Start `deployctl -q rollout ARTIFACT` with DEPLOYCTL_STATE=state_dir, stdout and stderr piped."""
    return subprocess.Popen([DCTL, "-q", "rollout", str(art.path)], cwd=ROOT, text=True,
                            env={**os.environ, "DEPLOYCTL_STATE": str(state_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def journal_size(ctx) -> int:
    return ctx.journal.path.stat().st_size if ctx.journal.path.exists() else 0


def records_since(ctx, offset: int) -> list[dict]:
    """The controller journal records appended after byte `offset`."""
    return [json.loads(line) for line in ctx.journal.path.read_bytes()[offset:].splitlines() if line.strip()]


def wait_record(ctx, offset: int, match, seconds: float, proc: subprocess.Popen | None = None) -> dict | None:
    """Poll the journal (tightly: phases last milliseconds) for a record after `offset` that `match`es."""
    end, buf = time.monotonic() + seconds, b""
    with open(ctx.journal.path, "rb") as f:
        f.seek(offset)
        while time.monotonic() < end:
            chunk = f.read()
            if chunk:
                *lines, buf = (buf + chunk).split(b"\n")
                for line in lines:
                    rec = json.loads(line)
                    if match(rec):
                        return rec
            elif proc is not None and proc.poll() is not None:
                return None
            else:
                time.sleep(0.001)
    return None


def run_phases(records: list[dict], action: str = "rollout") -> list[str]:
    return [r["phase"] for r in records if r.get("action") == action and "phase" in r]


def node(ctx, name: str):
    return next(n for n in ctx.nodes if n.name == name)


def on_base(base, gate_state: str) -> tuple:
    """A node's fleet_view on the base release, running it, with this gate, not halted."""
    return (base.digest, base.digest, gate_state, False)


# ---- a hook into a run, the observer around a test, two controllers at once ---------------------------

def at_phase(phase: str, action: Callable[[], Any]) -> Callable[..., None]:
    """An event hook (a Context's on_event) that calls `action()` once, when `phase` starts; what it
    returned is in the hook's `fired` list, empty until then."""
    fired: list = []

    def hook(kind, **data):
        if kind == "phase" and data.get("phase") == phase and data.get("status") == "start" and not fired:
            fired.append(action())

    hook.fired = fired  # type: ignore[attr-defined]
    return hook


def heal(ctx, docker_spec) -> None:
    """After a fault test: every container running, unpaused and on the fleet network, sshd answering
    (bounded), and an interrupted run recovered. conftest's `fleet` fixture then brings back the base
    release with gates open; it cannot while the journal shows an interrupted run (every rollout is
    refused until `recover`)."""
    assert revive(ctx, *docker_spec)
    if api.interrupted(ctx):
        api.recover(ctx)


@pytest.fixture
def under_observer(observer, ctx, docker_spec):
    """Run the test under the observer (observer.py), then heal the fleet. A module of fault tests takes
    it for every test: `pytestmark = pytest.mark.usefixtures("under_observer")` (conftest provides it)."""
    yield observer
    heal(ctx, docker_spec)


def race(arts, state_dirs, timeout: float = 120) -> tuple[list[subprocess.Popen], int, int, list[tuple[str, str]]]:
    """Two controllers started together, `deployctl -q rollout arts[i]` with state folder state_dirs[i]:
    exactly one must finish (exit 0) and the other be refused (exit 5, LOCKED). Return the processes,
    the winner's and the loser's index, and each one's (stdout, stderr)."""
    procs = [cli_rollout(s, a) for a, s in zip(arts, state_dirs, strict=True)]
    outs: list[tuple[str, str]] = []
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [ExitCode.OK, ExitCode.LOCKED], (codes, outs)
    win, lose = (0, 1) if codes[0] == 0 else (1, 0)
    return procs, win, lose, outs
