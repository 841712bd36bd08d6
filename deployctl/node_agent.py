"""Node-side half of deployctl: run as `python3 -I -c <this file> OP ARGS...` over SSH.

Standard library only; never imported by the controller (commands.py sends its
source text). Every op prints one JSON object on stdout, or one JSON error on
stderr with exit 1. It is not installed on the node: what runs is always the
controller's own copy, so the two cannot drift apart.
"""

import hashlib
import json
import os
import re
import sys

HEX64 = re.compile(r"[0-9a-f]{64}\Z")
PART = re.compile(r"^[A-Za-z0-9._+-]+$")


class Refused(Exception):
    pass


def out(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def hashes(folder):
    """Return {relpath: sha256} of every regular file under folder; anything else is reported."""
    files, odd = {}, []
    for base, dirs, names in os.walk(folder):
        dirs.sort()
        for n in names + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            p = os.path.join(base, n)
            rel = os.path.relpath(p, folder).replace(os.sep, "/")
            if os.path.islink(p) or not os.path.isfile(p):
                odd.append(rel)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            files[rel] = h.hexdigest()
    return files, sorted(odd)


def digest_of(files):
    text = "".join("%s  %s\n" % (files[p], p) for p in sorted(files, key=lambda s: s.encode()))
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def release_dir(root, digest):
    if not HEX64.match(digest):
        raise Refused("bad digest %r" % digest)
    return os.path.join(root, "releases", digest)


def current_name(root):
    try:
        target = os.readlink(os.path.join(root, "current"))
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name if HEX64.match(name) else "?" + target


# Ed25519 signature check (RFC 8032, section 6): the node has no crypto library, and
# checks the artifact's signature itself against the key pinned at `fleet up`.
P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(a, b):
    x = (a[1] - a[0]) * (b[1] - b[0]) % P
    y = (a[1] + a[0]) * (b[1] + b[0]) % P
    c, d = 2 * a[3] * b[3] * D % P, 2 * a[2] * b[2] % P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f, g * h, f * g, e * h)


def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _point(raw):
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P or (x == 0 and sign):
        return None
    if (x & 1) != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def ed25519_ok(public, msg, sig):
    """True if `sig` is public's ed25519 signature of msg."""
    if len(public) != 32 or len(sig) != 64:
        return False
    a, r = _point(public), _point(sig[:32])
    s = int.from_bytes(sig[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + public + msg).digest(), "little") % L
    gy = 4 * pow(5, P - 2, P) % P
    g = _point(gy.to_bytes(32, "little"))
    left, right = _mul(s, g), _add(r, _mul(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % P == 0 and (left[1] * right[2] - right[1] * left[2]) % P == 0


def check_signed(root, manifest, sig_hex, files, digest):
    """Refuse unless the manifest is signed by the pinned key and names exactly the staged files."""
    try:
        with open(os.path.join(root, "state", "signing.pub")) as f:
            public = bytes.fromhex(f.read().strip())
        sig = bytes.fromhex(sig_hex.decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        raise Refused("no usable pinned signing key or signature on this node")
    if not ed25519_ok(public, manifest, sig):
        raise Refused("manifest signature does not verify with the pinned key")
    try:
        doc = json.loads(manifest)
    except ValueError:
        raise Refused("manifest is not JSON")
    if not isinstance(doc, dict) or doc.get("digest") != digest or doc.get("files") != files:
        raise Refused("signed manifest does not match the staged files")


def member_path(m, seen):
    """Return the release-relative path of a files/ member, None for the manifest; refuse anything unsafe."""
    name = m.name
    parts = name.split("/")
    if name in seen:
        raise Refused("duplicate member %r" % name)
    seen.add(name)
    if name.startswith("/") or ".." in parts or any(p in ("", ".") for p in parts[:-1]):
        raise Refused("member %r escapes the release" % name)
    if not (m.isreg() or m.isdir()):
        raise Refused("member %r is not a regular file or folder" % name)
    if name in ("manifest.json", "manifest.sig") or (m.isdir() and name in ("files", "files/")):
        return None
    if parts[0] != "files" or len(parts) < 2 or not all(PART.match(p) for p in parts[1:] if p):
        raise Refused("unexpected member %r" % name)
    return "/".join(p for p in parts[1:] if p)


def extract(tar, stage, meta):
    """Stream members into `stage`, hashing as they are written; return {relpath: sha256}.

    manifest.json and manifest.sig are kept in `meta` (they are small and come first).
    """
    seen, files = set(), {}
    for m in tar:
        rel = member_path(m, seen)
        if rel is None:
            if m.isreg():
                meta[m.name] = tar.extractfile(m).read(1 << 20)
            continue
        path = os.path.join(stage, rel)
        if m.isdir():
            os.makedirs(path, mode=0o755, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        src, h = tar.extractfile(m), hashlib.sha256()
        with open(path, "wb") as f:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o644)
        files[rel] = h.hexdigest()
    return files


def op_stage(root, digest):
    """Receive the artifact tar on stdin into a fresh folder, check every file, then rename it into place."""
    import shutil  # imported here: only stage and prune need them, and every op pays for startup
    import tarfile

    final = release_dir(root, digest)
    stage = os.path.join(root, "releases", ".stage-%s-%d" % (digest[:12], os.getpid()))
    try:
        os.makedirs(stage, mode=0o755)
        meta = {}
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|", bufsize=1 << 20) as tar:
            files = extract(tar, stage, meta)
        got = digest_of(files)
        if got != digest:
            raise Refused("staged files hash to %s, expected %s" % (got, digest))
        check_signed(root, meta.get("manifest.json", b""), meta.get("manifest.sig", b""), files, digest)
        reused = os.path.isdir(final) and hashes(final) == (files, [])
        if not reused:
            if os.path.lexists(final):
                shutil.rmtree(final) if os.path.isdir(final) else os.unlink(final)
            os.rename(stage, final)
            fsync_dir(os.path.dirname(final))
        out({"digest": got, "files": len(files), "reused": reused})
    except tarfile.TarError as exc:
        raise Refused("not a valid artifact tar: %s" % exc)
    except OSError as exc:
        raise Refused(("disk full: " if exc.errno == 28 else "") + "%s" % exc)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class Fault(Exception):
    def __init__(self, code, text):
        Exception.__init__(self, text)
        self.code, self.text = code, text


def _xml(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def rpc(sock_path, method, *params):
    """Call supervisord's XML-RPC over its unix socket with a plain HTTP/1.0 request.

    Importing http.client and xmlrpc.client would cost more than the call (about 17 ms of a
    node's CPU, eight nodes at once); the request and the fault are small and fixed in shape.
    """
    import socket

    args = "".join("<param><value>%s</value></param>" % (
        "<boolean>%d</boolean>" % p if isinstance(p, bool) else "<string>%s</string>" % _xml(p)) for p in params)
    body = ('<?xml version="1.0"?><methodCall><methodName>%s</methodName><params>%s</params></methodCall>'
            % (method, args)).encode()
    head = b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    try:
        sock.connect(sock_path)
        sock.sendall(head % len(body) + body)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    finally:
        sock.close()
    code = re.search(rb"<name>faultCode</name>\s*<value>\s*<int>(-?\d+)</int>", reply)
    if code:
        text = re.search(rb"<name>faultString</name>\s*<value>\s*(?:<string>)?(.*?)(?:</string>)?\s*</value>", reply, re.S)
        raise Fault(int(code.group(1)), text.group(1).decode("utf-8", "replace") if text else "")
    if not reply.startswith(b"HTTP/") or b" 200 " not in reply.split(b"\r\n", 1)[0]:
        raise OSError("unexpected answer %r" % reply[:60])


def supervised(sock_path, program, start):
    """Stop `program` (if running) and, if `start`, start it again; supervisor faults become Refused."""
    try:
        for attempt in range(5):
            try:
                rpc(sock_path, "supervisor.stopProcess", program, True)
            except Fault as exc:
                if exc.code != 70:  # NOT_RUNNING is fine: a first install, or a crashed router
                    raise
            if not start:
                return
            try:
                rpc(sock_path, "supervisor.startProcess", program, False)  # deployctl polls /health itself
                return
            except Fault as exc:
                # ALREADY_STARTED: supervisor's own retry (BACKOFF) started it between our stop and
                # start, maybe from the old release: stop it again and start it ourselves.
                if exc.code != 60 or attempt == 4:
                    raise
    except Fault as exc:
        raise Refused("supervisor: %s %s: %s" % ("restart" if start else "stop", program, exc.text))
    except OSError as exc:
        raise Refused("supervisor unreachable at %s: %s" % (sock_path, exc))


def op_switch(root, digest, sock_path=None, program=None):
    """Switch `current` (and restart through supervisord); a journal record on stdin is appended first."""
    target = release_dir(root, digest)
    record = read_record()
    if not os.path.isdir(target):
        raise Refused("release %s is not on this node" % digest[:12])
    previous = current_name(root)
    if record is not None:
        append_journal(root, dict(record, previous=previous))
    tmp = os.path.join(root, ".current-%d" % os.getpid())
    os.symlink(os.path.join("releases", digest), tmp)
    os.replace(tmp, os.path.join(root, "current"))  # rename(2): always one release or the other
    fsync_dir(root)
    if program:
        supervised(sock_path, program, start=True)
    out({"previous": previous, "current": digest, "restarted": bool(program)})


def op_stop(root, sock_path, program):
    supervised(sock_path, program, start=False)
    out({"stopped": program})


def op_prune(root, keep, *protect):
    import shutil

    rel = os.path.join(root, "releases")
    keep_set = set(protect) | {current_name(root)}
    names = sorted((n for n in os.listdir(rel) if HEX64.match(n)),
                   key=lambda n: os.stat(os.path.join(rel, n)).st_mtime, reverse=True)
    removed = []
    for n in names:
        if n in keep_set:
            continue
        if len(keep_set & set(names)) < int(keep):
            keep_set.add(n)
            continue
        shutil.rmtree(os.path.join(rel, n), ignore_errors=True)  # pruning never fails a deploy
        removed.append(n)
    for n in os.listdir(rel):
        if n.startswith(".stage-"):
            shutil.rmtree(os.path.join(rel, n), ignore_errors=True)
    out({"removed": removed})


def read_record():
    """Return the JSON object on stdin (a journal record), or None when stdin is empty."""
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise Refused("journal record is not JSON")
    if not isinstance(record, dict):
        raise Refused("journal record is not an object")
    return record


def append_journal(root, record):
    line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()  # one record, one line
    fd = os.open(os.path.join(root, "state", "journal.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(line)


def op_journal(root):
    record = read_record()
    if record is None:
        raise Refused("journal record is not JSON")
    out({"appended": append_journal(root, record)})


def op_halt(root):
    """Persist the halt flag even when the router process is down, so it starts halted."""
    state = os.path.join(root, "state")
    tmp = os.path.join(state, ".halted-%d" % os.getpid())
    with open(tmp, "w") as f:
        f.write("halted by deployctl\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(state, "halted"))
    fsync_dir(state)
    out({"halted": True})


OPS = {"stage": op_stage, "switch": op_switch,
       "prune": op_prune, "journal": op_journal, "halt": op_halt, "stop": op_stop}


def main(argv):
    if len(argv) < 2 or argv[0] not in OPS:
        raise Refused("usage: OP ROOT ARGS...")
    if not os.path.isabs(argv[1]):
        raise Refused("root must be absolute")
    OPS[argv[0]](*argv[1:])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Refused as exc:
        sys.stderr.write(json.dumps({"error": str(exc)}) + "\n")
        sys.exit(1)
    except Exception as exc:  # a node-side surprise is still one line for the controller
        sys.stderr.write(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}) + "\n")
        sys.exit(1)
