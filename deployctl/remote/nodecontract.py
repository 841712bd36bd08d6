"""The node contract of docs/node-layout.md as data: what an enrolled node holds, and what a node lacks.

Pure: `desired` says which folders and files a node must have (owner, mode, content), `probe`
is the one read that reports what it has, `parse_facts` its parser, and `plan` the steps that
close the gap, each a list of argv for `commands.render`. A node that has everything gets no
steps: enroll is idempotent. Secret contents (the token) are compared by sha256 only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from deployctl.remote.replies import NodeAnswerError

SUPERVISOR_DIR = "/etc/supervisor/conf.d"
SYSTEMD_DIR = "/etc/systemd/system"
SUDOERS_DIR = "/etc/sudoers.d"


@dataclass(frozen=True)
class Contract:
    """What enroll installs on one node: the install root, the service and who runs it."""
    root: str
    unit: str               # supervisord program or systemd unit name
    manager: str            # "supervisord" or "systemd"
    service_user: str       # owns the install root and runs the service
    login_user: str         # the SSH login user; not root: a sudoers rule lets it restart the service
    port: int               # where the service listens on the node
    token: str
    signing_pub: str
    tools: tuple[str, ...] = ()  # absolute path of supervisorctl / systemctl on the node (from the probe)


@dataclass(frozen=True)
class Want:
    """One path as the contract wants it: a folder (content None) or a file."""
    path: str
    owner: str
    mode: str               # octal text, as `stat -c %a` prints it
    content: str | None = None
    secret: bool = False    # never shown or journaled: the token
    check: str | None = None  # "sudoers": checked with `visudo -cf` before it is installed
    reload: bool = False    # the service manager rereads its configuration after it changes


@dataclass(frozen=True)
class Step:
    """One change: a line saying what, and the commands (run as root) that make it."""
    what: str
    argv: tuple[tuple[str, ...], ...]
    upload: Want | None = None  # a file to put first (its temporary path is the last token of argv[0])


def service_file(c: Contract) -> tuple[str, str]:
    """Return (path, text) of the service definition: a supervisord program or a systemd unit."""
    command = f"/usr/bin/python3 -B {c.root}/current/router.py --state-dir {c.root}/state --port {c.port}"
    if c.manager == "systemd":
        return f"{SYSTEMD_DIR}/{c.unit}.service", (
            "# Installed by `deployctl enroll`; runs whatever release `current` points at.\n"
            "[Unit]\nDescription=deployctl service " + c.unit + "\nAfter=network.target\n\n"
            "[Service]\nType=simple\nUser=" + c.service_user + "\nWorkingDirectory=" + c.root + "\n"
            "Environment=PYTHONDONTWRITEBYTECODE=1\nExecStart=" + command + "\n"
            "Restart=on-failure\nRestartSec=1\nKillMode=control-group\nTimeoutStopSec=5\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
    return f"{SUPERVISOR_DIR}/{c.unit}.conf", (
        "; Installed by `deployctl enroll`; runs whatever release `current` points at.\n"
        f"[program:{c.unit}]\ncommand={command}\ndirectory={c.root}\nuser={c.service_user}\n"
        'environment=PYTHONDONTWRITEBYTECODE="1"\nautostart=true\nautorestart=true\nstartsecs=1\n'
        "startretries=3\nstopwaitsecs=5\nstopasgroup=true\nkillasgroup=true\n"
        f"stdout_logfile=/var/log/{c.unit}.log\nstdout_logfile_maxbytes=5MB\nredirect_stderr=true\n")


def service_commands(c: Contract) -> list[list[str]]:
    """Return the commands the login user may run as root without a password: restart, stop and start
    of this one service, by the absolute path of its manager's tool."""
    tool = _tool(c)
    return [[tool, action, c.unit] for action in ("restart", "stop", "start")]


def _tool(c: Contract) -> str:
    name = "systemctl" if c.manager == "systemd" else "supervisorctl"
    return next((t for t in c.tools if t.rsplit("/", 1)[-1] == name), f"/usr/bin/{name}")


def sudoers_rule(c: Contract) -> str:
    """Return the sudoers file text: NOPASSWD for exactly the service's commands, nothing else."""
    commands = ", ".join(" ".join(argv) for argv in service_commands(c))
    return (f"# Installed by `deployctl enroll`: {c.login_user} may restart, stop and start {c.unit}, nothing else.\n"
            f"{c.login_user} ALL=(root) NOPASSWD: {commands}\n")


def sudoers_path(c: Contract) -> str:
    return f"{SUDOERS_DIR}/deployctl-{c.unit}"


def desired(c: Contract) -> list[Want]:
    """Return every folder and file the contract wants, in the order they must be made."""
    user = c.service_user
    path, text = service_file(c)
    wants = [Want(c.root, user, "755"), Want(f"{c.root}/releases", user, "755"), Want(f"{c.root}/state", user, "700"),
             Want(f"{c.root}/state/token", user, "600", c.token + "\n", secret=True),
             Want(f"{c.root}/state/signing.pub", user, "644", c.signing_pub.strip() + "\n"),
             Want(path, "root", "644", text, reload=True)]
    if c.login_user != "root":
        wants.append(Want(sudoers_path(c), "root", "440", sudoers_rule(c), check="sudoers"))
    return wants


# The probe prints one line per wanted path: "path <path> <kind> <owner> <mode> <sha256 or ->", plus
# "tool <path>" for the service managers found and "systemd yes|no". Paths come in as arguments.
PROBE_SH = r"""for t in supervisorctl systemctl; do p=$(command -v "$t") && echo "tool $p"; done
if [ -d /run/systemd/system ]; then echo "systemd yes"; else echo "systemd no"; fi
for p in "$@"; do
  if [ -d "$p" ] && [ ! -L "$p" ]; then echo "path $p dir $(stat -c '%U %a' "$p") -"
  elif [ -f "$p" ] && [ ! -L "$p" ]; then
    echo "path $p file $(stat -c '%U %a' "$p") $(sha256sum < "$p" | cut -d' ' -f1)"
  elif [ -e "$p" ] || [ -L "$p" ]; then echo "path $p other - - -"
  else echo "path $p none - - -"; fi
done"""


def probe(wants: list[Want]) -> list[str]:
    """The read (run as root) that reports what the node has of `wants`; parse_facts parses it."""
    return ["sh", "-c", PROBE_SH, "sh", *[w.path for w in wants]]


@dataclass(frozen=True)
class Facts:
    """What a node has: per path (kind, owner, mode, sha256), the tools found, whether systemd runs."""
    paths: dict[str, tuple[str, str, str, str]]
    tools: tuple[str, ...]
    systemd: bool


def parse_facts(text: str) -> Facts:
    """Parse the probe's output; NodeAnswerError naming the first line that is not understood."""
    paths: dict[str, tuple[str, str, str, str]] = {}
    tools: list[str] = []
    systemd = None
    for line in text.splitlines():
        parts = line.split(" ")
        if parts[0] == "tool" and len(parts) == 2 and parts[1].startswith("/"):
            tools.append(parts[1])
        elif parts[0] == "systemd" and len(parts) == 2 and parts[1] in ("yes", "no"):
            systemd = parts[1] == "yes"
        elif parts[0] == "path" and len(parts) == 6 and parts[2] in ("dir", "file", "other", "none"):
            paths[parts[1]] = (parts[2], parts[3], parts[4], parts[5])
        else:
            raise NodeAnswerError(f"enroll probe: unexpected line {line[:80]!r}")
    if systemd is None:
        raise NodeAnswerError("enroll probe: no systemd line")
    return Facts(paths, tuple(tools), systemd)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_manager(c: Contract, facts: Facts) -> str | None:
    """Return why the node cannot run the contract's service manager, or None if it can."""
    if c.manager == "systemd" and not facts.systemd:
        return "the playbook's service manager is systemd, but systemd does not run on this node"
    name = "systemctl" if c.manager == "systemd" else "supervisorctl"
    if not any(t.rsplit("/", 1)[-1] == name for t in facts.tools):
        return f"the playbook's service manager is {c.manager}, but {name} is not installed on this node"
    return None


def steps(c: Contract, facts: Facts, tmp: str) -> list[Step]:
    """Return the steps that bring the node from `facts` to the contract (none: it has everything).
    Files are put under `tmp` (a private folder of the login user) and installed from there."""
    steps: list[Step] = []
    reload = False
    for i, w in enumerate(desired(c)):
        kind, owner, mode, digest = facts.paths.get(w.path, ("none", "-", "-", "-"))
        group = w.owner
        if w.content is None:
            if kind != "dir":
                steps.append(Step(f"create folder {w.path} ({w.owner}, {w.mode})",
                                  (("install", "-d", "-o", w.owner, "-g", group, "-m", w.mode, w.path),)))
            elif (owner, mode) != (w.owner, w.mode):
                steps.append(Step(f"set {w.path} to {w.owner}, {w.mode} (was {owner}, {mode})",
                                  (("chown", f"{w.owner}:{group}", w.path), ("chmod", w.mode, w.path))))
            continue
        staged = f"{tmp}/{i}"
        if kind != "file" or digest != sha256(w.content):
            verb = "install" if kind == "none" else "replace"
            install = ("install", "-o", w.owner, "-g", group, "-m", w.mode, staged, w.path)
            check = (("visudo", "-cf", staged),) if w.check == "sudoers" else ()
            steps.append(Step(f"{verb} {w.path} ({w.owner}, {w.mode})", (("test", "-f", staged), *check, install),
                              upload=w))
            reload = reload or w.reload
        elif (owner, mode) != (w.owner, w.mode):
            steps.append(Step(f"set {w.path} to {w.owner}, {w.mode} (was {owner}, {mode})",
                              (("chown", f"{w.owner}:{group}", w.path), ("chmod", w.mode, w.path))))
    if reload:
        steps.append(reload_step(c))
    return steps


def reload_step(c: Contract) -> Step:
    """The service manager rereads its configuration and knows the service (it starts once a release exists)."""
    tool = _tool(c)
    if c.manager == "systemd":
        return Step(f"systemd: reload units, enable {c.unit}",
                    ((tool, "daemon-reload"), (tool, "enable", f"{c.unit}.service")))
    return Step(f"supervisord: reread, add {c.unit}", ((tool, "reread"), (tool, "update", c.unit)))


FIRST_STEP_EXIT = 100  # the apply script exits FIRST_STEP_EXIT + i when step i fails


def apply_script(steps: list[Step]) -> list[str]:
    """One command (run as root) making every step in order: one sudo, not one per step. It stops at
    the first step that fails, exiting FIRST_STEP_EXIT + its index (failed_step reads it back)."""
    from deployctl.remote.commands import render

    lines = [f"{render([list(a) for a in s.argv])} || exit {FIRST_STEP_EXIT + i}" for i, s in enumerate(steps)]
    return ["sh", "-c", "\n".join(lines)]


def failed_step(steps: list[Step], code: int) -> int | None:
    """Return the index of the step an apply script's exit `code` names, or None (it did not get that far)."""
    i = code - FIRST_STEP_EXIT
    return i if 0 <= i < len(steps) else None
