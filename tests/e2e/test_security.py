"""Security on the real nodes: the node checks signatures itself, tampered artifacts never reach a
node, and the control token never shows up in output, logs or journals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

from helpers import ROOT

from deployctl.errors import ExitCode
from deployctl.release import artifact, signing
from deployctl.remote import commands, routers
from deployctl.remote.ssh import Call

DCTL = [str(ROOT / ".venv" / "bin" / "deployctl")]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": os.environ.get("DEPLOYCTL_STATE", str(ROOT / ".deployctl"))}
    return subprocess.run(DCTL + list(args), cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def releases_on(ctx, node: str) -> tuple[str, ...]:
    with ctx.ssh([n for n in ctx.nodes if n.name == node]) as f:
        res = f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root))))
    return commands.parse_probe(res[node].stdout).releases


def test_a_node_refuses_an_artifact_signed_by_another_key(ctx, base_release, make_release, tmp_path):
    """Even if the controller's check were bypassed, the node checks the signature with its pinned key."""
    v2 = make_release("7.7.7")
    other = tmp_path / "other-keys"
    private, _ = signing.generate(other)
    src = tmp_path / "src"
    with tarfile.open(fileobj=io.BytesIO(v2.payload())) as tar:
        for m in tar.getmembers():
            if m.isreg() and m.name.startswith("files/"):
                (src / m.name[len("files/"):]).parent.mkdir(parents=True, exist_ok=True)
                (src / m.name[len("files/"):]).write_bytes(tar.extractfile(m).read())
    forged = artifact.build(src, tmp_path / "dist", ctx.playbook.name, private)
    assert forged.digest == v2.digest  # same files, same digest: only the signer differs
    before = releases_on(ctx, "node3")
    node3 = [n for n in ctx.nodes if n.name == "node3"]
    with ctx.ssh(node3) as f:
        res = f.run_all(lambda n: Call(commands.render(
            commands.stage(ctx.root, forged.digest, len(forged.payload()), 3)), forged.payload()))
    assert res["node3"].exit_code == 1
    assert commands.agent_error(res["node3"].stderr) == "manifest signature does not verify with the pinned key"
    assert releases_on(ctx, "node3") == before and forged.digest not in before


def test_a_tampered_artifact_is_refused_before_any_node_is_touched(ctx, base_release, make_release, tmp_path):
    v2 = make_release("7.7.8")
    data = bytearray(v2.payload())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        member = tf.getmember("files/router.json")
    data[member.offset_data + member.size // 2] ^= 0x20  # one bit of router.json: same size, other sha256
    bad = tmp_path / "tampered.tar"
    bad.write_bytes(bytes(data))
    journal_before = ctx.journal.path.read_bytes()
    proc = cli("rollout", str(bad))
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr == ("deployctl: error: tampered.tar: file 'router.json' does not match its size and sha256 "
                           "in the manifest\n"), proc.stderr
    assert ctx.journal.path.read_bytes() == journal_before
    assert {a.body["digest"] for a in routers.health(ctx.nodes).values()} == {base_release.digest}
    assert all(v2.digest not in releases_on(ctx, n) for n in ("node1", "node8"))


def test_the_control_token_never_appears_in_output_logs_or_journals(ctx, base_release, node_exec):
    token = ctx.token()
    outputs = [
        cli("status", "--json"), cli("gate", "status", "--json"), cli("verify", "--json"), cli("history", "--json"),
        cli("gate", "open", "--expect", "0" * 64),  # a refusal: failure paths must not leak it either
        cli("halt"), cli("resume", "--json"), cli("gate", "open"), cli("status"),
    ]
    assert outputs[4].returncode == ExitCode.MISMATCH
    assert all(p.returncode == 0 for i, p in enumerate(outputs) if i != 4), [p.stderr for p in outputs]
    for proc in outputs:
        assert token not in proc.stdout + proc.stderr
    assert token not in ctx.journal.path.read_text()
    for node in ("node1", "node5"):
        code, text = node_exec(node, "cat /opt/router/state/journal.jsonl /var/log/router.log /var/log/sshd.log")
        assert code == 0 and token not in text
        code, mode = node_exec(node, "stat -c '%a %U' /opt/router/state/token /opt/router/state/journal.jsonl")
        assert mode.split("\n")[:2] == ["600 root", "600 root"]
    records = [json.loads(line) for line in ctx.journal.path.read_text().splitlines()]
    assert not any("token" in key.lower() for rec in records for key in rec)
