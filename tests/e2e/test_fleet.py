"""End-to-end checks of the fleet itself: SSH trust, router health and HTTP contract, halt, tokens, files.

Every test talks to the eight real nodes only through their 127.0.0.1 ports
(or `docker exec` through `node_exec` to read or break a node). The autouse
`fleet` fixture in conftest.py brings the fleet back to the base release,
running, not halted and with every gate open after each test.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from helpers import order, post_order, wait

from deployctl import api
from deployctl.remote import commands, routers
from deployctl.remote.ssh import Call, SSHFleet, Target
from deployctl.state import keys

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG = json.loads((ROOT / "fleet" / "router" / "router.json").read_text())
MAX_CHILD = CONFIG["max_child_qty"]
HEALTH_KEYS = {"service", "version", "digest", "gate", "halted", "flags", "uptime_s", "orders", "child_orders",
               "rejected", "errors", "max_children_per_order", "breaker", "pid", "release_dir"}


def _node(ctx: api.Context, name: str):
    return next(n for n in ctx.nodes if n.name == name)


def _health(node) -> dict:
    ans = routers.request(node, "GET", "/health", timeout=5.0)
    assert ans.status == 200, ans.reason()
    return ans.body


def _uid() -> str:
    return f"e2e-{uuid.uuid4().hex[:16]}"


def _post_raw(node, data: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    """POST raw bytes to /orders (gate.request only sends JSON it encodes itself); return (status, body)."""
    conn = http.client.HTTPConnection(node.host, node.router_port, timeout=timeout)
    try:
        conn.request("POST", "/orders", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read(1 << 20))
    finally:
        conn.close()


def _ssh(ctx: api.Context, name: str, argv, timeout: float = 30.0):
    """Run one rendered command on one node over the fleet's pinned SSH; return its NodeResult."""
    with ctx.ssh([_node(ctx, name)]) as f:
        return f.run_all(lambda n: Call(commands.render(argv), timeout=timeout))[name]


# ---- 1, 2: SSH with pinned host keys --------------------------------------------------------------

def test_every_node_answers_ssh_with_its_pinned_key_and_its_own_hostname(ctx):
    with ctx.ssh() as f:
        res = f.connect()
        assert sorted(res) == [f"node{i}" for i in range(1, 9)]
        for name, r in res.items():
            assert (r.ok, r.error, r.host_key_refused, r.exit_code) == (True, None, False, 0), name
        names = f.run_all(lambda n: Call("hostname", timeout=10))
    assert sorted(names) == sorted(res)
    for name, r in names.items():
        assert (r.error, r.exit_code, r.stderr) == (None, 0, b""), f"{name}: {r.reason()}"
        assert r.stdout.decode().strip() == name


def test_a_command_with_a_lot_of_stderr_completes(ctx):
    size = 3_000_000
    with ctx.ssh([_node(ctx, "node7")]) as f:
        r = f.run_all(lambda n: Call(f"head -c {size} /dev/zero >&2; echo done", timeout=10))["node7"]
    assert (r.error, r.exit_code, r.stdout, len(r.stderr)) == (None, 0, b"done\n", size)


def test_a_node_flooding_stderr_is_cut_off_and_named(ctx):
    """Past channel.MAX_STDERR (4 MiB) the node is cut off, not read to the end: 1 GiB is never held."""
    with ctx.ssh([_node(ctx, "node7"), _node(ctx, "node8")]) as f:
        res = f.run_all(lambda n: Call("head -c 1G /dev/zero >&2; echo done" if n == "node7" else "echo done",
                                       timeout=60))
    assert (res["node7"].error, res["node8"].stdout) == ("answer too large: more than 4 MiB on stderr", b"done\n")


def _known_hosts_line(port: int, public_line: str) -> str:
    kind, blob = public_line.split()[:2]
    return f"[127.0.0.1]:{port} {kind} {blob}\n"


def test_a_wrong_or_missing_host_key_is_refused_and_nothing_is_added(ctx, tmp_path, node_exec):
    real_kh = ctx.state.known_hosts
    user_kh = Path.home() / ".ssh" / "known_hosts"
    real_before = real_kh.read_bytes()
    user_before = user_kh.read_bytes() if user_kh.exists() else None
    node1 = _node(ctx, "node1")
    target = Target(node1.name, node1.host, node1.ssh_port, node1.user)
    real_pub = ctx.state.host_key("node1").with_name("node1_ed25519.pub").read_text().strip()
    real_fp = keys.fingerprint(real_pub)

    bogus = keys.new_keypair("bogus-node1")
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(_known_hosts_line(node1.ssh_port, bogus.public_line))
    # node2's genuine key pinned for node1's address: a real fleet key, but the wrong node's.
    other = tmp_path / "known_hosts_other"
    node2_pub = ctx.state.host_key("node2").with_name("node2_ed25519.pub").read_text().strip()
    other.write_text(_known_hosts_line(node1.ssh_port, node2_pub))
    for kh, pinned in ((wrong, bogus.public_line), (other, node2_pub)):
        kh_before = kh.read_bytes()
        with SSHFleet([target], ctx.state.client_key, kh, connect_timeout=5, parallel=1) as f:
            r = f.connect()["node1"]
            ran = f.run_all(lambda n: Call("touch /tmp/e2e-should-not-run", timeout=10))["node1"]
        assert r.host_key_refused is True and r.ok is False and r.exit_code is None
        assert r.error == (f"host key mismatch at 127.0.0.1:{node1.ssh_port}: got ssh-ed25519 {real_fp}, "
                           f"pinned {keys.fingerprint(pinned)}; refusing to connect")
        assert (ran.host_key_refused, ran.exit_code, ran.stdout) == (True, None, b"")
        assert kh.read_bytes() == kh_before

    empty = tmp_path / "known_hosts_empty"
    empty.write_bytes(b"")
    with SSHFleet([target], ctx.state.client_key, empty, connect_timeout=5, parallel=1) as f:
        r = f.connect()["node1"]
    assert r.host_key_refused is True and r.ok is False
    assert r.error == f"no pinned host key for 127.0.0.1:{node1.ssh_port}; refusing to connect"
    assert empty.read_bytes() == b""

    assert real_kh.read_bytes() == real_before
    assert (user_kh.read_bytes() if user_kh.exists() else None) == user_before
    assert node_exec("node1", "test ! -e /tmp/e2e-should-not-run")[0] == 0


# ---- 3: health ------------------------------------------------------------------------------------

def test_health_reports_the_base_release_on_every_node(ctx, base_release):
    answers = api.gate_status(ctx)
    assert sorted(answers) == sorted(n.name for n in ctx.nodes)
    pids = set()
    for name, a in answers.items():
        assert a.status == 200, f"{name}: {a.reason()}"
        b = a.body
        assert set(b) == HEALTH_KEYS, name
        assert (b["service"], b["version"], b["digest"]) == ("order-router", CONFIG["version"], base_release.digest)
        assert base_release.version == CONFIG["version"]
        assert (b["gate"], b["halted"], b["flags"]) == ("open", False, CONFIG["flags"])
        assert b["release_dir"] == f"/opt/router/releases/{base_release.digest}"
        assert isinstance(b["uptime_s"], float) and b["uptime_s"] >= 0
        assert isinstance(b["pid"], int) and b["pid"] > 1
        for counter in ("orders", "child_orders", "rejected", "errors"):
            assert type(b[counter]) is int and b[counter] >= 0, (name, counter)
        assert b["errors"] == 0, name
        pids.add((name, b["pid"]))
    assert len(pids) == 8


# ---- 4: gate --------------------------------------------------------------------------------------

def test_orders_are_refused_while_the_gate_is_closed_and_a_wrong_digest_keeps_it_closed(ctx, base_release):
    token = ctx.token()
    closed = api.gate_close(ctx)
    assert {n: (a.status, a.body["gate"]) for n, a in closed.items()} == {n.name: (200, "closed") for n in ctx.nodes}

    for node in ctx.nodes:
        before = _health(node)
        ans = post_order(node, order(_uid(), 250))
        assert (ans.status, ans.body) == (503, {"error": "gate closed"}), node.name
        after = _health(node)
        assert (after["child_orders"], after["orders"]) == (before["child_orders"], before["orders"]), node.name

    for node in ctx.nodes:
        ans = routers.request(node, "POST", "/control/gate", {"action": "open", "digest": "0" * 64}, token)
        assert (ans.status, ans.body) == (409, {"error": f"digest mismatch: this node runs {base_release.digest}"})
        assert _health(node)["gate"] == "closed", node.name
        ans = post_order(node, order(_uid(), 250))
        assert (ans.status, ans.body) == (503, {"error": "gate closed"}), node.name

    report = api.gate_open(ctx)
    assert report.ok and report.expected == base_release.digest
    for node in ctx.nodes:
        assert _health(node)["gate"] == "open", node.name
        before = _health(node)["child_orders"]
        oid = _uid()
        ans = post_order(node, order(oid, 250))
        assert ans.status == 200, f"{node.name}: {ans.reason()}"
        assert (ans.body["id"], ans.body["quantity"], ans.body["filled"]) == (oid, 250, 250)
        assert [c["qty"] for c in ans.body["children"]] == [100, 100, 50]
        assert all(c["qty"] <= MAX_CHILD and c["price"] == 10.5 for c in ans.body["children"])
        assert _health(node)["child_orders"] - before == 3, node.name


# ---- 5: concurrency -------------------------------------------------------------------------------

def test_concurrent_orders_for_one_parent_never_route_more_than_its_quantity(ctx):
    node = _node(ctx, "node4")
    before = _health(node)
    parent = order(_uid(), 1000)
    threads_n = 20
    barrier = threading.Barrier(threads_n, timeout=10)
    answers: list = [None] * threads_n

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = post_order(node, parent, timeout=10)

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)

    statuses = sorted(a.status for a in answers)
    assert set(statuses) <= {200, 409}, [(a.status, a.body) for a in answers]
    accepted = [a for a in answers if a.status == 200]
    assert accepted, "no request was accepted"
    children = [c["qty"] for a in accepted for c in a.body["children"]]
    assert sum(children) == 1000
    assert all(0 < q <= MAX_CHILD for q in children)
    assert len(children) == 10
    for a in answers:
        if a.status == 409:
            assert a.body == {"error": f"parent {parent['id']} already fully routed"}
    after = _health(node)
    assert after["child_orders"] - before["child_orders"] == len(children)
    assert after["orders"] - before["orders"] == len(accepted)
    assert after["rejected"] - before["rejected"] == threads_n - len(accepted)
    again = post_order(node, parent)
    assert (again.status, again.body) == (409, {"error": f"parent {parent['id']} already fully routed"})


# ---- 6: halt survives a restart --------------------------------------------------------------------

def test_halt_survives_a_router_restart_and_resume_leaves_the_gate_closed(ctx, base_release, node_exec):
    node, token = _node(ctx, "node3"), ctx.token()
    old_pid = _health(node)["pid"]

    ans = routers.request(node, "POST", "/control/halt", {}, token)
    assert ans.status == 200, ans.reason()
    assert (ans.body["halted"], ans.body["gate"]) == (True, "closed")
    assert node_exec("node3", "test -f /opt/router/state/halted")[0] == 0

    r = _ssh(ctx, "node3", ["supervisorctl", "restart", "router"])
    assert r.ok, r.reason()
    assert wait(lambda: (a := routers.request(node, "GET", "/health", timeout=1.0)).ok and a.body["pid"] != old_pid,
                30), "router on node3 did not come back with a new pid"
    h = _health(node)
    assert h["pid"] != old_pid
    assert (h["halted"], h["gate"], h["digest"]) == (True, "closed", base_release.digest)
    ans = post_order(node, order(_uid(), 100))
    assert (ans.status, ans.body) == (503, {"error": "halted"})
    ans = routers.request(node, "POST", "/control/gate", {"action": "open", "digest": base_release.digest}, token)
    assert (ans.status, ans.body) == (409, {"error": "halted: resume before opening the gate"})

    ans = routers.request(node, "POST", "/control/resume", {}, token)
    assert ans.status == 200, ans.reason()
    assert (ans.body["halted"], ans.body["gate"], ans.body["pid"]) == (False, "closed", h["pid"])
    assert node_exec("node3", "test -e /opt/router/state/halted")[0] == 1
    ans = post_order(node, order(_uid(), 100))
    assert (ans.status, ans.body) == (503, {"error": "gate closed"})


# ---- 7: control token -----------------------------------------------------------------------------

def test_control_without_a_good_token_is_refused_and_the_token_is_never_logged(ctx, node_exec):
    node, token = _node(ctx, "node5"), ctx.token()
    wrong = secrets.token_hex(32)
    assert wrong != token
    bodies = {"gate": {"action": "close"}, "halt": {}, "resume": {}}
    for presented in (None, "", wrong):
        for action, body in bodies.items():
            ans = routers.request(node, "POST", f"/control/{action}", body, presented)
            why = "unsigned request" if presented is None else "bad signature"  # signed with the wrong key
            assert (ans.status, ans.body) == (401, {"error": f"unauthorized: {why}"}), (action, presented == wrong)
            h = _health(node)
            assert (h["gate"], h["halted"]) == ("open", False), action
    assert node_exec("node5", "test -e /opt/router/state/halted")[0] == 1

    # Halted for real: an unauthenticated resume or gate open must not lift it.
    assert routers.request(node, "POST", "/control/halt", {}, token).status == 200
    for presented in (None, wrong):
        why = "unsigned request" if presented is None else "bad signature"
        ans = routers.request(node, "POST", "/control/resume", {}, presented)
        assert (ans.status, ans.body) == (401, {"error": f"unauthorized: {why}"})
        ans = routers.request(node, "POST", "/control/gate", {"action": "open", "digest": _health(node)["digest"]},
                           presented)
        assert (ans.status, ans.body) == (401, {"error": f"unauthorized: {why}"})
        assert (_health(node)["halted"], _health(node)["gate"]) == (True, "closed")
    assert routers.request(node, "POST", "/control/resume", {}, token).status == 200

    code, log = node_exec("node5", "cat /var/log/router.log")
    assert code == 0
    # The refusals were logged, so the absence of the token below is meaningful.
    assert "refused control request /control/halt from" in log
    assert ": unsigned request" in log and ": bad signature" in log
    assert token not in log and wrong not in log
    code, node_journal = node_exec("node5", "cat /opt/router/state/journal.jsonl")
    assert code == 0 and token not in node_journal
    code, sshd_log = node_exec("node5", "cat /var/log/sshd.log")
    assert code == 0 and token not in sshd_log
    assert token.encode() not in ctx.journal.path.read_bytes()


# ---- 9: malformed orders --------------------------------------------------------------------------

_BASE = order("e2e-malformed", 250)
_RANGE = f"quantity: should be between 1 and {CONFIG['max_order_qty']}"
_PRICE = "limit_price: should be a finite number above 0 and at most 1e9"


def _without(key: str) -> bytes:
    return json.dumps({k: v for k, v in _BASE.items() if k != key}).encode()


def _with(**kw) -> bytes:
    return json.dumps({**_BASE, **kw}).encode()


MALFORMED = [
    ("not json", b"not json", "body: malformed JSON: Expecting value: line 1 column 1 (char 0)"),
    ("empty", b"", "body: malformed JSON: Expecting value: line 1 column 1 (char 0)"),
    ("array", json.dumps([_BASE]).encode(), "body: should be a JSON object"),
    *[(f"missing {k}", _without(k), f"missing field {k!r}") for k in ("id", "symbol", "side", "quantity",
                                                                      "limit_price")],
    ("quantity 0", _with(quantity=0), _RANGE),
    ("quantity negative", _with(quantity=-5), _RANGE),
    ("quantity bool", _with(quantity=True), "quantity: should be an integer"),
    ("quantity string", _with(quantity="250"), "quantity: should be an integer"),
    ("quantity float", _with(quantity=250.0), "quantity: should be an integer"),
    ("quantity absurd", _with(quantity=10**12), _RANGE),
    ("limit_price 0", _with(limit_price=0), _PRICE),
    ("limit_price negative", _with(limit_price=-1.5), _PRICE),
    ("limit_price NaN string", _with(limit_price="NaN"), "limit_price: should be a number"),
    ("limit_price NaN literal", b'{"id": "x", "symbol": "ACME", "side": "buy", "quantity": 1, "limit_price": NaN}',
     "body: malformed JSON: NaN is not JSON"),
    ("limit_price overflow", json.dumps(_BASE).replace("10.5", "1e400").encode(), _PRICE),
    ("unknown field", _with(venue="dark"), "unknown field 'venue'"),
    ("duplicate key", b'{"id": "a", "id": "b"}', "body: malformed JSON: duplicate key 'id'"),
    ("Infinity literal", json.dumps(_BASE).replace("10.5", "Infinity").encode(),
     "body: malformed JSON: Infinity is not JSON"),
    ("limit_price above 1e9", _with(limit_price=1e9 + 1), _PRICE),
    ("not UTF-8", b"\xff", "body: malformed JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
                           "invalid start byte"),
    ("nested too deeply", b"[" * 30000 + b"]" * 30000, "body: malformed JSON: nested too deeply"),
    ("too large", b" " * 70000, "body: larger than 65536 bytes"),
    ("id too long", _with(id="a" * 65), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    ("id null", _with(id=None), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    ("symbol lowercase", _with(symbol="acme"), "symbol: should be a string of 1-12 characters of [A-Z0-9.]"),
    ("side unknown", _with(side="hold"), 'side: should be "buy" or "sell"'),
]


def test_malformed_orders_get_400_naming_the_problem_and_route_nothing(ctx):
    node = _node(ctx, "node6")
    before = _health(node)
    assert before["gate"] == "open"  # else every answer would be 503 before validation
    for label, data, error in MALFORMED:
        status, body = _post_raw(node, data)
        assert (status, body) == (400, {"error": error}), label
    after = _health(node)
    assert (after["orders"], after["child_orders"]) == (before["orders"], before["child_orders"])
    assert after["rejected"] - before["rejected"] == len(MALFORMED)
    assert after["errors"] == before["errors"]
    ok = post_order(node, order(_uid(), 100))
    assert ok.status == 200 and ok.body["filled"] == 100  # the router still routes good orders


# ---- 10: the fleet CLI ----------------------------------------------------------------------------

def _cli(ctx: api.Context, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": str(ctx.state_dir)}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "deployctl"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_verify_exits_10_when_a_node_presents_a_host_key_other_than_the_pinned_one(ctx, base_release, tmp_path):
    """A CI gate must tell a security incident from an outage: exit 10, not 4 (README, docs/ci-gate.md)."""
    state = tmp_path / "state"
    shutil.copytree(ctx.state_dir, state, ignore=shutil.ignore_patterns("deploy.lock", "dockerd.*"))
    node3 = _node(ctx, "node3")
    lines = (state / "keys" / "known_hosts").read_text().splitlines(keepends=True)
    bogus = keys.new_keypair("bogus-node3")
    (state / "keys" / "known_hosts").write_text("".join(
        _known_hosts_line(node3.ssh_port, bogus.public_line) if f"]:{node3.ssh_port} " in line else line
        for line in lines))
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "deployctl"), "verify", "--json", "--expect",
                           base_release.digest], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 10 and doc["ok"] is False
    assert [n["node"] for n in doc["nodes"] if n["host_key_refused"]] == ["node3"]
    assert [n["node"] for n in doc["nodes"] if not n["ok"]] == ["node3"]


def test_fleet_status_lists_every_node_and_fleet_up_again_changes_nothing(ctx, base_release, docker_spec):
    st = _cli(ctx, "fleet", "status", "--json", timeout=120)
    assert st.returncode == 0, st.stderr
    rows = json.loads(st.stdout)
    assert [r["node"] for r in rows] == [f"node{i}" for i in range(1, 9)]
    for i, (r, n) in enumerate(zip(rows, ctx.nodes, strict=True), 1):
        assert r == {"node": f"node{i}", "container": "running", "ssh": f"127.0.0.1:{n.ssh_port}", "sshd": True,
                     "router": f"127.0.0.1:{n.router_port}", "digest": base_release.digest, "gate": "open",
                     "halted": False, "problem": None}

    dc, spec = docker_spec
    ids_before = {n.service: dc.containers.get(n.container).id for n in spec.nodes}
    pids_before = {n.name: _health(n)["pid"] for n in ctx.nodes}
    up = _cli(ctx, "fleet", "up", timeout=600)
    assert up.returncode == 0, up.stderr
    assert "nothing to install" in up.stderr
    assert {n.service: dc.containers.get(n.container).id for n in spec.nodes} == ids_before
    assert {n.name: _health(n)["pid"] for n in ctx.nodes} == pids_before
    assert {n.name: _health(n)["digest"] for n in ctx.nodes} == {n.name: base_release.digest for n in ctx.nodes}


# ---- 11: permissions on the nodes -----------------------------------------------------------------

def test_node_secrets_and_release_files_have_tight_permissions(ctx, base_release, node_exec):
    rel = f"/opt/router/releases/{base_release.digest}"
    for node in ctx.nodes:
        code, out = node_exec(node.name, "stat -c '%a %U %G %n' /opt/router/state/token /root/.ssh/authorized_keys "
                                         "/opt/router/state /root/.ssh")
        assert code == 0, out
        assert out.splitlines() == ["600 root root /opt/router/state/token",
                                    "600 root root /root/.ssh/authorized_keys",
                                    "700 root root /opt/router/state",
                                    "700 root root /root/.ssh"], node.name
        code, out = node_exec(node.name, f"find {rel} -printf '%y %m %u %g %P\\n'")
        assert code == 0, out
        assert sorted(out.splitlines()) == sorted(["d 755 root root "] + [f"f 644 root root {f}"
                                                                          for f in base_release.files]), node.name
        # Nothing under the install root may be writable by others (a planted release or symlink).
        code, out = node_exec(node.name, "find /opt/router -perm -o+w ! -type l")
        assert (code, out) == (0, ""), node.name
        code, out = node_exec(node.name, "readlink /opt/router/current")
        assert out.strip() == f"releases/{base_release.digest}", node.name


# ---- 11: a fleet of another size -------------------------------------------------------------------

def test_fleet_up_nodes_16_writes_its_files_brings_up_a_verified_fleet_and_down_removes_it(tmp_path):
    """`fleet up --nodes 16` as its own project on its own ports, beside the fleet the suite uses."""
    import docker

    inventory, compose, state = tmp_path / "fleet16.yaml", tmp_path / "compose16.yaml", tmp_path / "state"
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    base = [str(ROOT / ".venv" / "bin" / "deployctl"), "-q", "-i", str(inventory)]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    try:
        up = cli("fleet", "up", "--nodes", "16", "--compose", str(compose), "--project", "deployctl-e2e16",
                 "--first-ssh-port", "2301", "--first-router-port", "8301")
        assert up.returncode == 0, up.stdout + up.stderr
        assert [n.name for n in api.open_context(inventory, ROOT / "playbooks/router.yaml").nodes] == \
            [f"node{i}" for i in range(1, 17)]
        verify = cli("verify", "--json")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        doc = json.loads(verify.stdout)
        assert doc["ok"] is True and len(doc["nodes"]) == 16 and all(n["ok"] for n in doc["nodes"])
        running = docker.from_env().containers.list(filters={"label": "deployctl.fleet=deployctl-e2e16"})
        assert sorted(c.name for c in running) == sorted(f"deployctl-e2e16-node{i}" for i in range(1, 17))
    finally:
        down = cli("fleet", "down", "--keep-images", "--compose", str(compose))
    assert down.returncode == 0, down.stderr
    assert docker.from_env().containers.list(all=True, filters={"label": "deployctl.fleet=deployctl-e2e16"}) == []
