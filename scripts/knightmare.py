"""The 2012 failure, replayed (issue 10 item 6): `bash scripts/knightmare.sh [--inventory I] [--compose C] [--state S]`.

v1 is fleet/router plus Power Peg, an old code path behind the flag `power_peg` (a module, power_peg.py,
that sends child orders without counting fills, capped at PEG_CAP per parent so the replay stays small),
built against a temporary registry in which power_peg is still active (the world of 2003). v2 repurposes
the name `power_peg` for new code; v2' is v2 with the flag renamed (`retail_liquidity`).

The naive way (2012): plain scp/ssh copies v2 to 7 of the 8 nodes and switches them by hand, node8
keeps v1; gates opened by hand; a bounded burst of orders to every node. The deployctl way: the registry
refuses v2 (`build` exit 2); a rollout of v2' that cannot reach node8 changes nothing (exit 4); node8
forced onto v1 behind deployctl's back while `watch` runs: its breaker halts the fleet, `verify` names
node8, `gate open` is refused. Every rollout of the script goes through plan/approve/rollout --plan
(require_approval: true, two keys made with keygen). It ends on the playbook's own release, gates open,
and prints a table naive vs deployctl, then one JSON line `KNIGHTMARE {...}` with the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from deployctl import api
from deployctl.errors import DeployctlError
from deployctl.remote import routers
from deployctl.testfleet import api as testfleet_api
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleetfiles

ROOT = Path(__file__).resolve().parents[1]
DEPLOYCTL = [sys.executable, "-m", "deployctl"]
STALE = "node8"
PEG_CAP = 50  # runaway child orders per parent order on v1's old path (bounded: the real one was not)
ORDERS_PER_NODE = 10  # the naive burst: orders sent to every node
QTY = 100  # = max_child_qty: one child per order on a correct router, so child_orders - orders = runaway

POWER_PEG_PY = f'''"""Power Peg (v1, 2003): test code for the venue. Keeps sending child orders for a parent and
never counts their fills against it. Retired in 0.9.0; its flag name must never be used again."""

CAP = {PEG_CAP}  # the replay's bound; the 2012 code had none


def send(router, order):
    """Send up to CAP extra child orders for `order`, never recording a fill; return how many were sent."""
    sent = 0
    while sent < CAP and not router.routing_blocker():
        router.venue.execute(order["symbol"], order["side"], 1, order["limit_price"])
        router.count("child_orders")
        sent += 1
    return sent
'''

OLD_HOOK = '        self.count("orders")\n'
NEW_HOOK = ('        if self.config["flags"].get("power_peg"):  # v1 only: the old path, still wired in\n'
            '            import power_peg\n            power_peg.send(self, order)\n' + OLD_HOOK)
KNOWN = 'KNOWN_FLAGS = ("price_improvement", "log_orders")'


def log(msg: str) -> None:
    print(f"• {msg}", flush=True)


def make_source(dest: Path, version: str, flag: str | None, peg: bool) -> Path:
    """A copy of fleet/router with `version`, an extra flag `flag` (true) and, with peg, the Power Peg path."""
    import shutil
    shutil.copytree(ROOT / "fleet" / "router", dest, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = json.loads((dest / "router.json").read_text())
    cfg["version"] = version
    if flag:
        cfg["flags"][flag] = True
        rel = (dest / "release.py").read_text()
        assert KNOWN in rel, "fleet/router/release.py: KNOWN_FLAGS changed; update scripts/knightmare.py"
        (dest / "release.py").write_text(rel.replace(KNOWN, KNOWN[:-1] + f', "{flag}")'))
    if peg:
        svc = (dest / "service.py").read_text()
        assert svc.count(OLD_HOOK) == 1, "fleet/router/service.py: place() changed; update scripts/knightmare.py"
        (dest / "service.py").write_text(svc.replace(OLD_HOOK, NEW_HOOK))
        (dest / "power_peg.py").write_text(POWER_PEG_PY)
    (dest / "router.json").write_text(json.dumps(cfg) + "\n")
    return dest


def registry(path: Path, extra: str) -> Path:
    """The real flag registry with `extra` (YAML lines under flags:) appended."""
    path.write_text((ROOT / "playbooks" / "flags.yaml").read_text().rstrip("\n") + "\n" + extra)
    return path


def playbook(path: Path, base: Path, source: Path, reg: Path, approver_pub: str | None) -> Path:
    """`base` (a playbook) with absolute source and registry, and require_approval with one approver."""
    text = base.read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("source:"):
            line = f"source: {source}"
        elif line.startswith("flag_registry:"):
            line = f"flag_registry: {reg}"
        lines.append(line)
    if approver_pub:
        lines += ["require_approval: true", "approvers:", f"  - {{name: bob, key: {approver_pub}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Replay:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="knightmare-"))
        self.state = Path(args.state or os.environ.get("DEPLOYCTL_STATE") or ROOT / ".deployctl").resolve()
        self.inventory, self.compose = Path(args.inventory).resolve(), Path(args.compose).resolve()
        self.base_book = Path(args.playbook).resolve()
        self.env = {**os.environ, "DEPLOYCTL_STATE": str(self.state)}

    # ----- plumbing
    def cli(self, book: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*DEPLOYCTL, "-i", str(self.inventory), "-p", str(book), *argv], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def ssh(self, node, *argv: str) -> None:
        keys = self.state / "keys"
        opts = ["-i", str(keys / "client_ed25519"), "-o", f"UserKnownHostsFile={keys / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "ConnectTimeout=5"]
        if argv[0] == "scp":
            cmd = ["scp", "-q", "-r", *opts, "-P", str(node.ssh_port), argv[1], f"{node.user}@{node.host}:{argv[2]}"]
        else:
            cmd = ["ssh", *opts, "-p", str(node.ssh_port), f"{node.user}@{node.host}", argv[1]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SystemExit(f"knightmare: {' '.join(cmd[:1])} to {node.name} failed: {done.stderr.strip()}")

    def by_hand(self, node, art) -> None:
        """2012's manual deploy: copy the release with scp, switch `current`, restart; no checks at all."""
        files = self.tmp / f"x-{art.digest[:12]}"
        if not files.exists():
            with tarfile.open(art.path) as tar:
                tar.extractall(files, filter="data")
        root = "/opt/router"
        self.ssh(node, "ssh", f"rm -rf {root}/releases/{art.digest}")
        self.ssh(node, "scp", str(files / "files"), f"{root}/releases/{art.digest}")
        self.switched_at = time.monotonic()
        self.ssh(node, "ssh", f"ln -sfn releases/{art.digest} {root}/current.new && mv -T {root}/current.new "
                              f"{root}/current && supervisorctl restart router >/dev/null")

    def counters(self) -> dict[str, tuple[int, int]]:
        return {n: (a.body.get("orders", 0), a.body.get("child_orders", 0)) if a.ok else (0, 0)
                for n, a in routers.health(self.ctx.nodes).items()}

    def wait_health(self, want, seconds: float = 30) -> dict:
        end = time.monotonic() + seconds
        while True:
            health = routers.health(self.ctx.nodes)
            if all(a.ok for a in health.values()) and want(health):
                return health
            if time.monotonic() > end:
                raise SystemExit(f"knightmare: the fleet never reached the expected state: "
                                 f"{ {n: (a.body if a.ok else a.error) for n, a in health.items()} }")
            time.sleep(0.05)

    def burst(self, accepted: dict, stop: threading.Event, per_node: int, seconds: float) -> None:
        """One client per node posting orders of QTY (bounded); accepted[node] = monotonic times of 200s."""
        def one(node):
            end = time.monotonic() + seconds
            for i in range(per_node):
                if stop.is_set() or time.monotonic() > end:
                    return
                ans = routers.request(node, "POST", "/orders", {"id": f"km-{node.name}-{time.monotonic_ns()}-{i}",
                                   "symbol": "KCG", "side": "buy", "quantity": QTY, "limit_price": 10.0}, timeout=5)
                if ans.status == 200:
                    accepted.setdefault(node.name, []).append(time.monotonic())
                elif not self.args.quiet_refusals:
                    time.sleep(0.02)
        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in self.ctx.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 10)

    def guarded_rollout(self, art, expect_exit: int = 0) -> subprocess.CompletedProcess:
        """plan (alice) -> approve (bob) -> rollout --plan, as processes; the exit code must be expect_exit."""
        plan = self.tmp / f"plan-{art.digest[:12]}-{time.monotonic_ns()}.json"
        api.make_plan(self.gctx, art.path, plan, self.alice, 600)
        done = self.cli(self.gbook, "approve", str(plan), "--key", str(self.bob))
        if done.returncode != 0:
            raise SystemExit(f"knightmare: approve failed: {done.stderr.strip()}")
        done = self.cli(self.gbook, "rollout", str(art.path), "--plan", str(plan), "--break-lock", timeout=300)
        if done.returncode != expect_exit:
            raise SystemExit(f"knightmare: rollout --plan exited {done.returncode}, expected {expect_exit}: "
                             f"{done.stderr.strip()}")
        return done

    def restore(self) -> None:
        """Back to the playbook's own release on every node, not halted, gates open (through the two-person rule)."""
        self.ctx.lock.path.unlink(missing_ok=True)
        api.halt(self.ctx)
        routers.control(self.ctx.nodes, "resume", self.ctx.token())
        self.guarded_rollout(self.base)
        self.wait_health(lambda h: all(a.body.get("digest") == self.base.digest and a.body.get("gate") == "open"
                                       and not a.body.get("halted") for a in h.values()))

    # ----- the replay
    def run(self) -> dict:
        self.ctx = api.open_context(self.inventory, self.base_book, self.state)
        log(f"fleet up (if needed): {self.compose}")
        testfleet_api.fleet_up(self.ctx, self.compose)
        self.alice, self.bob = self.tmp / "alice", self.tmp / "bob"
        api.keygen(self.alice)
        bob_pub = api.keygen(self.bob)
        reg2003 = registry(self.tmp / "flags-2003.yaml", "")
        retired = '    state: retired\n    introduced: "0.1.0"\n    retired: "0.9.0"\n'
        reg2003.write_text(reg2003.read_text().replace(retired, '    state: active\n    introduced: "0.1.0"\n'))
        reg_now = registry(self.tmp / "flags-2012.yaml", "  retail_liquidity:\n    meaning: the Retail Liquidity "
                           "Program (new in 2.0.0)\n    state: active\n    introduced: \"2.0.0\"\n")
        base_src = (ROOT / "fleet" / "router").resolve()
        self.gbook = playbook(self.tmp / "guarded.yaml", self.base_book, base_src, reg_now, bob_pub)
        self.gctx = api.open_context(self.inventory, self.gbook, self.state)
        dist = self.tmp / "dist"
        self.base = api.build(self.gctx, dist)
        v1_src = make_source(self.tmp / "v1" / "router", "0.8.0-powerpeg", "power_peg", peg=True)
        ctx2003 = api.open_context(self.inventory, playbook(self.tmp / "2003.yaml", self.base_book, v1_src, reg2003,
                                                            None), self.state)
        v1 = api.build(ctx2003, dist)
        log(f"v1 {v1.digest[:12]}: fleet/router + power_peg.py (Power Peg, old meaning), built with the 2003 registry")
        v2_src = make_source(self.tmp / "v2" / "router", "2.0.0", "power_peg", peg=False)
        v2 = api.build(ctx2003, dist, v2_src)  # only the 2003 registry lets it through
        v2p_src = make_source(self.tmp / "v2p" / "router", "2.0.0-rlp", "retail_liquidity", peg=False)
        v2p = api.build(self.gctx, dist, v2p_src)
        log(f"v2 {v2.digest[:12]}: power_peg repurposed; v2' {v2p.digest[:12]}: the flag renamed retail_liquidity")
        self.restore()
        stale = next(n for n in self.ctx.nodes if n.name == STALE)
        others = [n for n in self.ctx.nodes if n.name != STALE]

        # ----- the naive way
        log(f"naive: scp v1 to {STALE}, v2 to the other {len(others)} nodes, switch by hand")
        api.halt(self.ctx)
        routers.control(self.ctx.nodes, "resume", self.ctx.token())
        self.by_hand(stale, v1)
        for node in others:
            self.by_hand(node, v2)
        self.wait_health(lambda h: all(a.body.get("digest") == (v1 if n == STALE else v2).digest
                                       for n, a in h.items()))
        for node in self.ctx.nodes:
            digest = v1.digest if node.name == STALE else v2.digest
            routers.open_gate([node], digest, self.ctx.token(), actor="knightmare")
        before = self.counters()
        accepted: dict = {}
        t0 = time.monotonic()
        self.burst(accepted, threading.Event(), ORDERS_PER_NODE, 30)
        naive_s = time.monotonic() - t0
        after = self.counters()
        naive = {"runaway_child_orders": sum((after[n][1] - before[n][1]) - (after[n][0] - before[n][0])
                                             for n in after),
                 "seconds_until_halted": None, "stopped_by_hand_after_s": round(naive_s, 2),
                 "nodes_took_orders_while_mixed": len(accepted)}
        api.halt(self.ctx)  # the operator, at last (2012: 45 minutes)
        log(f"naive: {naive['runaway_child_orders']} runaway child orders from {STALE}; nothing halted it")

        # ----- the deployctl way
        v2_book = playbook(self.tmp / "v2-real.yaml", self.base_book, v2_src, (ROOT / "playbooks" / "flags.yaml")
                           .resolve(), None)
        done = self.cli(v2_book, "build", "--out", str(self.tmp / "refused"))
        refused_line = done.stderr.strip()
        log(f"deployctl (1): build v2 -> exit {done.returncode}: {refused_line}")
        if done.returncode != 2 or "power_peg" not in refused_line:
            raise SystemExit("knightmare: build of v2 should be refused naming power_peg: "
                             f"{done.returncode} {refused_line}")
        self.restore()
        plan = self.tmp / "plan-v2p-paused.json"
        api.make_plan(self.gctx, v2p.path, plan, self.alice, 600)
        api.approve_plan(self.gctx, plan, self.bob)
        dc, spec = docker_fleet.client(), fleetfiles.load_spec(self.compose)
        container = docker_fleet.container(dc, spec, STALE)
        container.stop(timeout=2)  # node8 unreachable (a paused container is not supported everywhere)
        try:
            done = self.cli(self.gbook, "rollout", str(v2p.path), "--plan", str(plan), timeout=300)
        finally:
            container.start()
        self.wait_health(lambda h: True, 60)
        unreachable_line = (done.stderr.strip().splitlines() or [""])[-1]
        log(f"deployctl (2): rollout v2' with {STALE} stopped -> exit {done.returncode}: {unreachable_line}")
        unchanged = self.wait_health(lambda h: True)
        if done.returncode != 4 or any(a.body.get("digest") != self.base.digest for a in unchanged.values()):
            raise SystemExit(f"knightmare: the rollout should change nothing and exit 4: {done.returncode}")
        self.guarded_rollout(v2p)
        watch = subprocess.Popen([*DEPLOYCTL, "-i", str(self.inventory), "-p", str(self.gbook), "watch",
                                  "--interval", "0.25", "--sweeps", "400"], cwd=ROOT, env=self.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list = []
        reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # never let the pipe fill
        reader.start()
        try:
            end = time.monotonic() + 30
            while not any(all(n["gate"] == "open" and n["reachable"] for n in json.loads(x)["nodes"]) for x in lines):
                if time.monotonic() > end or watch.poll() is not None:
                    raise SystemExit(f"knightmare: watch never saw the whole fleet open: {watch.stderr.read()}")
                time.sleep(0.05)
            before = self.counters()
            stop, accepted = threading.Event(), {}
            sender = threading.Thread(target=self.burst, args=(accepted, stop, 300, 40), daemon=True)
            sender.start()
            log(f"deployctl (3): watch running, orders flowing; {STALE} forced onto v1 behind deployctl's back")
            self.by_hand(stale, v1)
            t_mixed = self.switched_at  # from the moment `current` is switched, node8's disk differs: mixed
            self.wait_health(lambda h: all(a.body.get("halted") for a in h.values()), 60)
            halted_s = time.monotonic() - t_mixed
            stop.set()
            watch.wait(60)
            reader.join(10)
            err = watch.stderr.read()
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.communicate()
        sender.join(15)
        trip = (err.strip().splitlines() or [""])[-1]
        log(f"deployctl (3): watch exit {watch.returncode}: {trip}")
        after = self.counters()
        verify = self.cli(self.gbook, "verify")
        named = [line for line in verify.stdout.splitlines() if STALE in line and "runs" in line]
        log(f"deployctl (3): verify exit {verify.returncode}: {named[0].strip() if named else verify.stdout.strip()}")
        gopen = self.cli(self.gbook, "gate", "open")
        log(f"deployctl (3): gate open exit {gopen.returncode}: {(gopen.stderr.strip().splitlines() or [''])[-1]}")
        if watch.returncode != 7 or verify.returncode == 0 or gopen.returncode == 0:
            raise SystemExit("knightmare: watch should trip (7), verify and gate open should refuse")
        took = sorted(n for n, times in accepted.items() if any(t >= t_mixed for t in times))
        deployctl = {"runaway_child_orders": sum((after[n][1] - before[n][1]) - (after[n][0] - before[n][0])
                                                 for n in after),
                     "seconds_until_halted": round(halted_s, 2), "stopped_by_hand_after_s": None,
                     "nodes_took_orders_while_mixed": len(took), "stale_node_took_orders": STALE in took,
                     "build_v2_exit": 2, "rollout_unreachable_exit": 4, "watch_exit": watch.returncode,
                     "verify_exit": verify.returncode, "gate_open_exit": gopen.returncode, "breaker": trip}
        log("restoring the playbook's release, gates open")
        self.restore()
        return {"naive": naive, "deployctl": deployctl, "base_digest": self.base.digest}


def table(res: dict) -> str:
    n, d = res["naive"], res["deployctl"]
    rows = [("", "naive (2012)", "deployctl"),
            ("runaway child orders", str(n["runaway_child_orders"]), str(d["runaway_child_orders"])),
            ("seconds until halted", f"never (stopped by hand after {n['stopped_by_hand_after_s']} s)",
             f"{d['seconds_until_halted']} s (watch breaker)"),
            ("nodes that took orders while mixed", str(n["nodes_took_orders_while_mixed"]),
             f"{d['nodes_took_orders_while_mixed']} ({STALE}: {'yes' if d['stale_node_took_orders'] else 'no'})")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inventory", default=str(ROOT / "fleet" / "fleet.yaml"))
    p.add_argument("--compose", default=str(ROOT / "containers" / "compose.yaml"))
    p.add_argument("--playbook", default=str(ROOT / "playbooks" / "router.yaml"))
    p.add_argument("--state", default=None, help="state folder (default: $DEPLOYCTL_STATE or ./.deployctl)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.set_defaults(quiet_refusals=False)
    args = p.parse_args(argv)
    replay = Replay(args)
    try:
        res = replay.run()
    except (DeployctlError, SystemExit) as exc:
        text = str(exc)
        print(text if text.startswith("knightmare: ") else f"knightmare: {text}", file=sys.stderr)
        if getattr(replay, "base", None) is not None:  # never leave the fleet mixed: back to the base release
            try:
                replay.restore()
            except (DeployctlError, SystemExit) as again:
                print(f"knightmare: could not restore the base release: {again}", file=sys.stderr)
        return 1
    print(table(res))
    print("KNIGHTMARE " + json.dumps(res, sort_keys=True), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
