"""Node-side half of deployctl: run over SSH as `python3 -I -S -c BOOT ... OP ARGS...` (remote/agentpack.py).

Standard library only; never imported by the controller, which sends this file with every command:
compiled by the controller's Python when the node's runs the same bytecode, else as source text.
Every op prints one JSON object on stdout, or one JSON error on stderr with exit 1. It is not
installed on the node: what runs is always the controller's own copy, so the two cannot drift apart.

Startup is most of what a small op costs a node, eight nodes at once on a shared machine: only os,
sys and errno load at the start. hashlib, json and shutil are not imported on the way to the first
answer (json and shutil bring in re, enum, functools, bz2 and lzma, a measurable share of a node's CPU);
to_json/from_json and rmtree stand in for them, hashlib loads where a file is hashed. The figures behind
these choices are in docs/distribution.md ("Figures behind the code").
"""

import errno
import os
import sys

# Names for the type checker only: a module-level annotation is a string here, and a local one is never
# evaluated, so no annotation costs the node an import or needs a newer Python than the node's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

HEX = frozenset("0123456789abcdef")
PART_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def is_hex64(s):
    """A sha256 in lowercase hex: exactly 64 of 0-9a-f, nothing after."""
    return isinstance(s, str) and len(s) == 64 and HEX.issuperset(s)


def is_part(s):
    """One plain path part: letters, digits and ._+- only."""
    return isinstance(s, str) and s != "" and PART_CHARS.issuperset(s)


def is_number(s, digits):
    """1 to `digits` ASCII digits, nothing else (str.isdigit would take other scripts' digits)."""
    return 0 < len(s) <= digits and all(c in "0123456789" for c in s)


try:
    from _json import encode_basestring_ascii as _json_str  # CPython's, what json.dumps uses
except ImportError:  # another Python: json's own, at the cost of importing it
    from json.encoder import encode_basestring_ascii as _json_str


def to_json(obj, compact=False):
    """json.dumps(obj, sort_keys=True) (compact: with separators (",", ":")) for what the agent writes:
    dicts with str keys, lists, tuples, str, int, float, bool, None. TypeError for anything else."""
    comma, colon = (",", ":") if compact else (", ", ": ")

    def enc(o):
        if isinstance(o, str):
            return _json_str(o)
        if o is None or o is True or o is False:
            return {None: "null", True: "true", False: "false"}[o]
        if isinstance(o, int):
            return int.__repr__(o)
        if isinstance(o, float):
            if o != o or o in (float("inf"), float("-inf")):
                return "NaN" if o != o else ("Infinity" if o > 0 else "-Infinity")
            return float.__repr__(o)
        if isinstance(o, (list, tuple)):
            return "[" + comma.join(enc(v) for v in o) + "]"
        if isinstance(o, dict):
            if not all(isinstance(k, str) for k in o):
                raise TypeError("JSON object keys must be str here")
            return "{" + comma.join(_json_str(k) + colon + enc(o[k]) for k in sorted(o)) + "}"
        raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)

    return enc(obj)


class _ScanContext:
    """What CPython's C JSON scanner reads from json.JSONDecoder: json.loads' defaults."""

    strict, object_hook, object_pairs_hook = True, None, None
    parse_float, parse_int, parse_constant = float, int, float  # NaN, Infinity, -Infinity as json.loads


_SCANNER: "list[Any]" = []


def from_json(text):
    """json.loads(text) (str or UTF-8 bytes) with CPython's C scanner, without importing json; json
    itself where there is no C scanner. ValueError unless text is one JSON value (spaces around it)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not _SCANNER:
        try:
            from _json import make_scanner
            # The C scanner reads only the attributes _ScanContext has: a JSONDecoder would import json.
            _SCANNER.append(make_scanner(_ScanContext()))  # type: ignore[arg-type]
        except (ImportError, TypeError, AttributeError):
            _SCANNER.append(None)
    if _SCANNER[0] is None:
        import json
        return json.loads(text)
    space = " \t\n\r"
    start = len(text) - len(text.lstrip(space))
    try:
        obj, end = _SCANNER[0](text, start)
    except StopIteration:
        raise ValueError("not JSON")
    if text[end:].strip(space):
        raise ValueError("extra data after the JSON value")
    return obj


def rmtree(path, ignore_errors=True):
    """Remove `path` and everything under it without following a link (a link is removed itself).
    shutil.rmtree without importing shutil; with ignore_errors, what can be removed is, silently,
    else the first OSError is raised."""

    def remove(fn, p):
        try:
            fn(p)
        except OSError:
            if not ignore_errors:
                raise

    if os.path.islink(path) or not os.path.isdir(path):
        return remove(os.unlink, path)

    def failed(exc):
        if not ignore_errors:
            raise exc

    for base, dirs, names in os.walk(path, topdown=False, onerror=failed):
        for n in names:
            remove(os.unlink, os.path.join(base, n))
        for d in dirs:
            p = os.path.join(base, d)
            remove(os.unlink if os.path.islink(p) else os.rmdir, p)
    remove(os.rmdir, path)


class Refused(Exception):
    pass


def out(obj):
    sys.stdout.write(to_json(obj) + "\n")


def hashes(folder):
    """Return {relpath: sha256} of every regular file under folder; anything else is reported."""
    import hashlib

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
    import hashlib

    text = "".join("%s  %s\n" % (files[p], p) for p in sorted(files, key=lambda s: s.encode()))
    return hashlib.sha256(text.encode()).hexdigest()


def fsync_dir(path):
    """fsync a folder, or a file, by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refusal(exc):
    """The one-line refusal for an OSError while staging; ENOSPC says so plainly."""
    return Refused(("disk full: " if exc.errno == 28 else "") + "%s" % exc)


def stage_dir(root, digest):
    """This process's stage folder for `digest`: a dot name, never a release; prune removes leftovers."""
    return os.path.join(root, "releases", ".stage-%s-%d" % (digest[:12], os.getpid()))


def release_dir(root, digest):
    if not is_hex64(digest):
        raise Refused("bad digest %r" % digest)
    return os.path.join(root, "releases", digest)


def current_name(root):
    try:
        target = os.readlink(os.path.join(root, "current"))
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return name if is_hex64(name) else "?" + target


# Ed25519 signature check (RFC 8032, section 6): the node has no crypto library, and
# checks the artifact's signature itself against the key pinned at `fleet up`.
P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
# Written out, not computed at every start of the agent (a measurable part of each command):
# tests/process/node/test_agent.py checks them against their definitions, -121665/121666 mod P and 2^((P-1)/4) mod P.
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752


D2 = 2 * D % P
# The base point B (RFC 8032, 5.1): y = 4/5, x even.
GX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
GY = 46316835694926478169428394003475163141307993866256225615783033603165251855960


def _add(a, b):
    """a + b in extended coordinates (add-2008-hwcd-3, a = -1)."""
    x = (a[1] - a[0]) * (b[1] - b[0]) % P
    y = (a[1] + a[0]) * (b[1] + b[0]) % P
    c, d = a[3] * b[3] % P * D2 % P, 2 * a[2] * b[2] % P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(a):
    """2a in extended coordinates (dbl-2008-hwcd, a = -1): four squarings, no multiplication by D."""
    xx, yy, zz2 = a[0] * a[0] % P, a[1] * a[1] % P, 2 * a[2] * a[2] % P
    e, g = (a[0] + a[1]) ** 2 - xx - yy, yy - xx
    f, h = g - zz2, -xx - yy
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul2(s, p, t, q):
    """[s]p + [t]q with one shared chain of doublings (Straus-Shamir)."""
    both, acc = _add(p, q), (0, 1, 1, 0)
    for i in range(max(s.bit_length(), t.bit_length()) - 1, -1, -1):
        acc = _double(acc)
        bits = (s >> i & 1, t >> i & 1)
        if bits == (1, 1):
            acc = _add(acc, both)
        elif bits[0]:
            acc = _add(acc, p)
        elif bits[1]:
            acc = _add(acc, q)
    return acc


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
    """True if `sig` is public's ed25519 signature of msg: [s]B = R + [h]A, checked as [s]B + [h](-A) = R."""
    import hashlib

    if len(public) != 32 or len(sig) != 64:
        return False
    a, r = _point(public), _point(sig[:32])
    s = int.from_bytes(sig[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + public + msg).digest(), "little") % L
    minus_a = (P - a[0], a[1], a[2], P - a[3])
    got = _mul2(s, (GX, GY, 1, GX * GY % P), h, minus_a)
    return (got[0] - r[0] * got[2]) % P == 0 and (got[1] - r[1] * got[2]) % P == 0


def check_signed(root, manifest, sig_hex, files, digest, verified=None):
    """Refuse unless the manifest is signed by the pinned key and names exactly the staged files.
    `verified`: a (manifest, signature) pair verify_signed already passed; the same bytes again are
    not verified twice (pure-Python ed25519 is slow)."""
    if verified != (manifest, sig_hex):
        verify_signed(root, manifest, sig_hex)
    try:
        doc = from_json(manifest)
    except ValueError:
        raise Refused("manifest is not JSON")
    if not isinstance(doc, dict) or doc.get("digest") != digest or doc.get("files") != files:
        raise Refused("signed manifest does not match the staged files")


def verify_signed(root, manifest, sig_hex):
    """Refuse unless `manifest` (bytes) carries a good signature (hex bytes) by the pinned key."""
    try:
        with open(os.path.join(root, "state", "signing.pub")) as f:
            public = bytes.fromhex(f.read().strip())
        sig = bytes.fromhex(sig_hex.decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        raise Refused("no usable pinned signing key or signature on this node")
    if not ed25519_ok(public, manifest, sig):
        raise Refused("manifest signature does not verify with the pinned key")


def member_path(name, kind, seen):
    """Return the release-relative path of a files/ member, None for the manifest; refuse anything unsafe."""
    parts = name.split("/")
    if name in seen:
        raise Refused("duplicate member %r" % name)
    seen.add(name)
    if name.startswith("/") or ".." in parts or any(p in ("", ".") for p in parts[:-1]):
        raise Refused("member %r escapes the release" % name)
    if kind not in ("file", "dir"):
        raise Refused("member %r is not a regular file or folder" % name)
    if name in ("manifest.json", "manifest.sig") or (kind == "dir" and name in ("files", "files/")):
        return None
    if parts[0] != "files" or len(parts) < 2 or not all(is_part(p) for p in parts[1:] if p):
        raise Refused("unexpected member %r" % name)
    return "/".join(p for p in parts[1:] if p)


class Upload:
    """Exactly `size` bytes of stdin, read straight into the caller's buffers (no copy per block)."""

    def __init__(self, size, head=b""):
        # stdin's buffer is a BufferedReader, which has .raw; typeshed says only BinaryIO.
        self.raw, self.left, self.size, self.head = sys.stdin.buffer.raw, size, size, head  # type: ignore[union-attr]

    def fill(self, view):
        n = len(view)
        if n > self.left:
            raise Refused("not a valid artifact tar: it runs past the %d bytes sent" % self.size)
        got = min(n, len(self.head))  # bytes already read while waiting for the upload to begin
        if got:
            view[:got], self.head = self.head[:got], self.head[got:]
        while got < n:
            k = self.raw.readinto(view[got:])
            if not k:
                raise Refused("upload ended after %d of %d bytes" % (self.size - self.left + got, self.size))
            got += k
        self.left -= n

    def read(self, n):
        buf = bytearray(n)
        self.fill(memoryview(buf))
        return bytes(buf)


# What a tar member's type byte may be here; anything else (links, devices, GNU or global headers) is refused.
KINDS = {b"0": "file", b"\0": "file", b"5": "dir", b"x": "pax"}
TYPE_NAMES = {b"1": "a hard link", b"2": "a symlink", b"3": "a device", b"4": "a device", b"6": "a FIFO"}


def _octal(field, what):
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if not all(c in b"01234567" for c in text):
        raise Refused("not a valid artifact tar: bad %s field" % what)
    return int(text, 8)


def _header(block):
    """Return (name, kind, size) of a ustar header block, or None for the end-of-archive block."""
    if not any(block):
        return None
    stored = _octal(block[148:156], "checksum")
    if stored != sum(block[:148]) + 256 + sum(block[156:]):
        raise Refused("not a valid artifact tar: header checksum mismatch")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and block[345]:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    type_ = block[156:157]
    try:
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("not a valid artifact tar: a member name is not UTF-8")
    if type_ not in KINDS:
        kind = TYPE_NAMES.get(type_, "of an unknown type")
        raise Refused("member %r is %s, not a regular file or folder" % (name, kind))
    return name, KINDS[type_], _octal(block[124:136], "size")


def _pax_path(data):
    """The `path` of a pax extended header; any other key is refused."""
    path = None
    while data:
        length = data.split(b" ", 1)[0]
        if not length.isdigit() or int(length) < 5 or int(length) > len(data):
            raise Refused("not a valid artifact tar: bad pax header")
        record, data = data[:int(length)], data[int(length):]
        key, _, value = record[len(length) + 1:-1].partition(b"=")
        if key != b"path" or not record.endswith(b"\n"):
            raise Refused("not a valid artifact tar: pax key %r" % key.decode("ascii", "replace"))
        path = value.decode("utf-8", "strict")
    return path


def extract(up, stage, meta):
    """Stream members into `stage`, hashing as they are written; return {relpath: sha256}.

    manifest.json and manifest.sig are kept in `meta` (they are small and come first). One buffer
    carries every block from the pipe to the hash and the file.
    """
    import hashlib

    seen: set[str] = set()
    files, long_name = {}, None
    buf = bytearray(1 << 20)
    view, block = memoryview(buf), memoryview(buf)[:512]
    while True:
        up.fill(block)
        head = _header(bytes(block))
        if head is None:
            break
        name, kind, size = head
        pad = (-size) % 512
        if kind == "pax":
            if size > 65536 or long_name is not None:
                raise Refused("not a valid artifact tar: bad pax header")
            try:
                long_name = _pax_path(up.read(size + pad)[:size])
            except UnicodeDecodeError:
                raise Refused("not a valid artifact tar: a member name is not UTF-8")
            continue
        name, long_name = long_name if long_name is not None else name, None
        rel = member_path(name, kind, seen)
        if kind == "dir" or rel is None:
            if kind == "file":
                if size > 1 << 20:
                    raise Refused("member %r is too big" % name)
                meta[name] = up.read(size + pad)[:size]
            elif size:
                raise Refused("not a valid artifact tar: folder %r has a size" % name)
            if rel is not None:
                os.makedirs(os.path.join(stage, rel), mode=0o755, exist_ok=True)
            continue
        path = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        h, left = hashlib.sha256(), size
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # copied from an earlier release (deploy's reuse) or sent twice
            raise Refused("upload repeats a file the node already had: %s" % rel)
        try:
            os.fchmod(fd, 0o644)
            while left:
                chunk = view[:min(left, len(buf))]
                up.fill(chunk)
                h.update(chunk)
                done = 0
                while done < len(chunk):
                    done += os.write(fd, chunk[done:])
                left -= len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        up.fill(view[:pad])
        files[rel] = h.hexdigest()
    if long_name is not None:
        raise Refused("not a valid artifact tar: a pax header names no member")
    while up.left:  # the rest is the archive's zero padding, nothing else
        chunk = view[:min(up.left, len(buf))]
        up.fill(chunk)
        if any(chunk):
            raise Refused("not a valid artifact tar: data after the end of the archive")
    return files


def _stage_args(root, digest, size, keep):
    if not is_number(size, 12) or not is_number(keep, 4):
        raise Refused("bad size or keep argument")
    return release_dir(root, digest)


def probe_text(root):
    """The node's state for preflight, as "key value" lines (commands.parse_probe): whether the root
    exists, `current`'s target, halted, free bytes on `releases/`, and the release folders."""
    if not os.path.isdir(root):
        return "root no\n"
    try:
        link = os.readlink(os.path.join(root, "current"))
    except OSError:
        link = ""
    releases = os.path.join(root, "releases")
    fs = os.statvfs(releases if os.path.isdir(releases) else root)
    lines = ["root yes", "current " + link,
             "halted " + ("yes" if os.path.exists(os.path.join(root, "state", "halted")) else "no"),
             "free %d" % (fs.f_bavail * fs.f_frsize)]
    if os.path.isdir(releases):
        lines += ["release " + n for n in sorted(os.listdir(releases)) if not n.startswith(".")]
    return "\n".join(lines) + "\n"


def op_probe(root):
    sys.stdout.write(probe_text(root))


def op_deploy(root, digest, keep, *protect):
    """A rollout's one process per node: answer the probe at once, then build the release from what
    the node has and what is sent (content-addressed staging), then switch on request.

    Input, each step answered on stdout before the next is read:
      1. a reuse plan line {"files": {path: sha256}, "hints": {path: [[release, path], ...]}}: the
         files the controller thinks the node may hold, and where. Each is copied (never linked: a
         later tamper must not reach two releases) into the stage folder and hashed; only a copy with
         the right sha256 is kept. Answer {"have": [paths], "bytes": N}.
      2. a line with the size of the tar that follows, then the tar: the manifest and the files the
         node lacks. Every file, the release digest and the signature are checked as `stage` does.
      3. the switch request (held_switch).
    End of input at any wait changes nothing (the stage folder is removed).
    """
    _stage_args(root, digest, "0", keep)
    take_lock(root, durable=False)  # fsync'd once the probe is out: off the preflight's path
    out({"probe": probe_text(root)})
    sys.stdout.flush()
    sync_lock(root)
    request = Lines()
    plan = request.line(HOLD_SECONDS, 64 << 20)
    if plan is None:
        return release_lock(root)
    stage = stage_dir(root, digest)
    try:
        try:
            os.makedirs(stage, mode=0o755)
            files, hints, signed = reuse_hints(plan)
            if signed is not None:  # checked while the gates close, not after the upload
                verify_signed(root, *signed)
            found = reuse(root, files, hints, stage)
        except OSError as exc:
            raise refusal(exc)
        synced = sync_later([os.path.join(stage, rel) for rel in sorted(found)])
        have = {rel: files[rel] for rel in found}
        out({"have": sorted(have), "bytes": sum(os.path.getsize(src) for src in found.values())})
        sys.stdout.flush()
        size = request.line(HOLD_SECONDS, 32)
        if size is None:
            return release_lock(root)
        size = size.decode("ascii", "replace").strip()
        if not is_number(size, 12):
            raise Refused("bad upload size line")
        head = request.rest()  # what came with the size line: the upload's start, maybe more
        staged = stage_upload(root, digest, Upload(int(size), head[:int(size)]), stage, have, signed, synced)
    finally:
        rmtree(stage)
    out(staged)
    sys.stdout.flush()
    # Pruned while the controller waits for every node to stage, not before this node's answer.
    prune(root, int(keep), (digest,) + tuple(protect))
    held_switch(root, digest, head[int(size):])


class Lines:
    """stdin read raw, line by line; what was read past the last line is handed to the upload."""

    def __init__(self):
        self.raw, self.buf = sys.stdin.buffer.raw, b""  # type: ignore[union-attr]  # a BufferedReader, as in Upload

    def line(self, seconds, limit):
        """Return the next line (without its newline), or None at end of input; refuse a longer one."""
        signal = signals()

        def gone(signum, frame):  # an exception, not SIGALRM's default end: the stage folder is removed
            raise Refused("the controller sent nothing for %d s" % seconds)

        signal.signal(signal.SIGALRM, gone)
        signal.alarm(seconds)
        try:
            while b"\n" not in self.buf:
                if len(self.buf) > limit:
                    raise Refused("request line longer than %d bytes" % limit)
                chunk = self.raw.read(1 << 16)
                if not chunk:
                    return None
                self.buf += chunk
        finally:
            signal.alarm(0)
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def rest(self):
        rest, self.buf = self.buf, b""
        return rest


def signals():
    """signal.signal, alarm and SIGALRM without the signal module, which imports enum, functools and
    collections: measurable CPU on every node on the way to the reuse answer."""
    try:
        import _signal
    except ImportError:  # not CPython
        import signal as _signal
    return _signal


def reuse_hints(line):
    """Parse and check a reuse plan line; return (files, hints, (manifest, signature) bytes or None)."""
    try:
        doc = from_json(line)
    except (ValueError, RecursionError):
        raise Refused("reuse plan is not JSON")
    if not isinstance(doc, dict) or set(doc) not in ({"files", "hints"}, {"files", "hints", "manifest", "sig"}):
        raise Refused("reuse plan should have exactly files and hints, and maybe manifest and sig")
    files, hints = doc["files"], doc["hints"]
    signed = None
    if "manifest" in doc:
        manifest, sig = doc["manifest"], doc["sig"]
        if not isinstance(manifest, str) or not isinstance(sig, str) or not is_part(sig):
            raise Refused("reuse plan: manifest and sig should be strings")
        try:
            signed = (manifest.encode("utf-8"), sig.encode("ascii"))
        except UnicodeEncodeError:
            raise Refused("reuse plan: the manifest is not UTF-8")
    if not isinstance(files, dict) or not isinstance(hints, dict) or set(hints) != set(files):
        raise Refused("reuse plan: hints should name exactly the files")
    for rel, sha in files.items():
        sources = hints[rel]
        if not (safe_rel(rel) and is_hex64(sha) and isinstance(sources, list)
                and all(isinstance(h, list) and len(h) == 2 and is_hex64(h[0])
                        and safe_rel(h[1]) for h in sources)):
            raise Refused("reuse plan: bad entry for %r" % (rel,))
    return files, hints, signed


def safe_rel(rel):
    """A release-relative path of plain parts: nothing absolute, no . or .., no odd characters."""
    return isinstance(rel, str) and all(is_part(p) and p not in (".", "..") for p in rel.split("/"))


def reuse(root, files, hints, stage=None):
    """Find each file the node holds with the right sha256 and return {path: where it was found}: copied
    into `stage`, hashed as it is copied, or, without a stage (the dry run), hashed where it lies.

    A copy whose sha256 differs (a tampered or corrupted old file) is deleted, journaled on the node,
    and left to be sent."""
    have = {}
    for rel in sorted(files):
        for old, old_rel in hints[rel]:
            src = os.path.join(release_dir(root, old), old_rel)
            dst = None if stage is None else os.path.join(stage, rel)
            if dst is not None:
                os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            got = copy_hashing(src, dst)
            if got == files[rel]:
                have[rel] = src
                break
            if got is not None and dst is not None:
                os.unlink(dst)
                append_journal(root, {"action": "stage", "event": "not-reused", "file": rel, "from": old,
                                      "from_file": old_rel, "expected": files[rel], "found": got})
    return have


def copy_hashing(src, dst=None):
    """Return the sha256 of the regular file `src` (None if it is not one), copying it to a new `dst`
    as it is read when one is given (not fsync'd: the caller syncs it, sync_later)."""
    import stat

    try:
        fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    fd = None
    try:
        if not stat.S_ISREG(os.fstat(fin).st_mode):
            return None
        import hashlib

        h, buf = hashlib.sha256(), bytearray(1 << 20)
        view = memoryview(buf)
        if dst is not None:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.fchmod(fd, 0o644)
        while True:
            n = os.readv(fin, [buf])
            if not n:
                break
            h.update(view[:n])
            done = 0
            while fd is not None and done < n:
                done += os.write(fd, view[done:n])
        return h.hexdigest()
    finally:
        os.close(fin)
        if fd is not None:
            os.close(fd)


def sync_later(paths):
    """fsync the files `paths` on a thread of their own while the agent goes on (answers, receives the
    upload, extracts); return a function that waits for that and raises its first OSError. A release
    is renamed into place only after it returned: as durable as an fsync at each copy, but the copies'
    writes to disk no longer hold up the reuse answer (8 nodes' 10 MiB copies share one disk here)."""
    import _thread  # not threading: its import costs more than the wait it saves

    done, failed = _thread.allocate_lock(), []
    done.acquire()

    def work():
        try:
            for path in paths:
                fsync_dir(path)
        except OSError as exc:
            failed.append(exc)
        finally:
            done.release()

    _thread.start_new_thread(work, ())

    def wait():
        with done:
            if failed:
                raise failed[0]

    return wait


def op_have(root):
    """`rollout --dry-run`: read a reuse plan on stdin; answer the probe and which files the node holds
    with the right sha256 (hashed where they are: nothing is copied or written)."""
    found = reuse(root, *reuse_hints(sys.stdin.buffer.read(64 << 20))[:2])
    out({"probe": probe_text(root), "have": sorted(found), "bytes": sum(os.path.getsize(p) for p in found.values())})


def op_stage(root, digest, size, keep, *protect):
    """Receive the whole artifact tar (`size` bytes) on stdin, check every file, rename it into place,
    prune, answer; then wait on stdin for a switch request (held_switch), as `deploy` does."""
    _stage_args(root, digest, size, keep)
    stage = stage_dir(root, digest)
    try:
        try:
            os.makedirs(stage, mode=0o755)
        except OSError as exc:
            raise refusal(exc)
        staged = stage_upload(root, digest, Upload(int(size)), stage, {})
    finally:
        rmtree(stage)
    staged["removed"] = prune(root, int(keep), (digest,) + tuple(protect))
    out(staged)
    sys.stdout.flush()
    held_switch(root, digest)


def stage_upload(root, digest, up, stage, have, verified=None, synced=None):
    """Extract the upload into `stage` beside the files already there (`have`: path -> sha256), check
    the release digest and the signature and rename the folder into place; return the answer (the
    caller prunes)."""
    final = release_dir(root, digest)
    try:
        meta: dict[str, bytes] = {}
        files = extract(up, stage, meta)
        files.update(have)
        got = digest_of(files)
        if got != digest:
            raise Refused("staged files hash to %s, expected %s" % (got, digest))
        check_signed(root, meta.get("manifest.json", b""), meta.get("manifest.sig", b""), files, digest, verified)
        if synced is not None:  # the copies of `have` are on disk before the folder is renamed into place
            synced()
        reused = os.path.isdir(final) and hashes(final) == (files, [])
        if not reused:
            if os.path.lexists(final):
                rmtree(final, ignore_errors=False)
            os.rename(stage, final)
            fsync_dir(os.path.dirname(final))
    except OSError as exc:
        raise refusal(exc)
    return {"digest": got, "files": len(files), "reused": reused, "copied": len(have)}


class Fault(Exception):
    def __init__(self, code, text):
        Exception.__init__(self, text)
        self.code, self.text = code, text


def _xml(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def rpc(sock_path, method, *params):
    """Call supervisord's XML-RPC over its unix socket with a plain HTTP/1.0 request.

    Importing http.client and xmlrpc.client would cost a node more CPU than the call itself; the
    request and the fault are small and fixed in shape.
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
    if b"faultCode" not in reply:
        code = None
    else:
        import re  # only for a fault: the answer to every call is parsed without it

        code = re.search(rb"<name>faultCode</name>\s*<value>\s*<int>(-?\d+)</int>", reply)
    if code:
        text = re.search(rb"<name>faultString</name>\s*<value>\s*(?:<string>)?(.*?)(?:</string>)?\s*</value>",
                         reply, re.S)
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


def switch_to(root, digest, record):
    """Point `current` at the release by rename (journaling `record` first); return the previous release."""
    target = release_dir(root, digest)
    if not os.path.isdir(target):
        raise Refused("release %s is not on this node" % digest[:12])
    previous = current_name(root)
    if record is not None:
        append_journal(root, dict(record, previous=previous))
    tmp = os.path.join(root, ".current-%d" % os.getpid())
    os.symlink(os.path.join("releases", digest), tmp)
    os.replace(tmp, os.path.join(root, "current"))  # rename(2): always one release or the other
    fsync_dir(root)
    return previous


def op_switch(root, digest, sock_path=None, program=None):
    """Switch `current` (and restart through supervisord); a journal record on stdin is appended first."""
    switch_and_restart(root, digest, read_record(), [sock_path, program] if program else None)


def switch_and_restart(root, digest, record, sup=None, restart=None):
    """Switch to `digest`, then restart through supervisord (sup: [socket, program]) or the restart
    argv, and answer {"previous", "current", "restarted"}."""
    previous = switch_to(root, digest, record)
    if sup:
        supervised(sup[0], sup[1], start=True)
    elif restart:
        run_restart(restart)
    out({"previous": previous, "current": digest, "restarted": bool(sup or restart)})


HOLD_SECONDS = 600  # a controller that neither switches nor ends a held stage by then is gone


def held_switch(root, digest=None, pending=b""):
    """Wait for the controller's word on stdin, then switch.

    One JSON line {"digest": D, "record": {...}, "supervisor": [socket, program]} (or "restart":
    [argv]) switches to release D and restarts the service, answering like `switch`. After a stage
    D must be the staged release; after `retarget` it is any release on the node. End of input, or
    nothing within HOLD_SECONDS, changes nothing: a controller that dies cannot half-switch a node.
    """
    signal = signals()
    line = pending  # input already read past the upload
    if b"\n" not in line:
        signal.alarm(HOLD_SECONDS)  # SIGALRM's default action ends the process
        line += sys.stdin.buffer.readline(1 << 20)
        signal.alarm(0)
    if not line.strip():
        return release_lock(root)  # the run ended (or its controller died) before any switch here
    try:
        doc = from_json(line)
    except (ValueError, RecursionError):
        raise Refused("switch request is not JSON")
    if not isinstance(doc, dict) or not set(doc) <= {"digest", "record", "supervisor", "restart"}:
        raise Refused("switch request has unknown fields")
    record, sup, restart = doc.get("record"), doc.get("supervisor"), doc.get("restart")
    if not isinstance(doc.get("digest"), str) or (digest is not None and doc["digest"] != digest):
        raise Refused("switch request names %r, not the staged release" % (doc.get("digest"),)
                      if digest else "switch request names no release")
    if record is not None and not isinstance(record, dict):
        raise Refused("journal record is not an object")
    for argv, n in ((sup, 2), (restart, 0)):
        if argv is not None and not (isinstance(argv, list) and all(isinstance(a, str) and a for a in argv)
                                     and argv and (n == 0 or len(argv) == n)):
            raise Refused("switch request: bad supervisor or restart field")
    digest = doc["digest"]
    switch_and_restart(root, digest, record, sup, restart)


def op_retarget(root):
    """Rollback and recover: answer the probe at once, then switch on request to a release the node
    already has (held_switch). End of input changes nothing."""
    take_lock(root)
    out({"probe": probe_text(root)})
    sys.stdout.flush()
    held_switch(root)


def run_restart(argv):
    import subprocess

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=HOLD_SECONDS)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Refused("restart %s: %s" % (argv[0], exc))
    if proc.returncode != 0:
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        raise Refused("restart %s exited %d: %s" % (argv[0], proc.returncode, lines[-1] if lines else "no output"))


def op_stop(root, *how):
    """A revert with no release to go back to (a failed first rollout): stop the service (over
    supervisord's socket: SOCKET PROGRAM; or by running a command: --run ARGV...), then remove
    `current`, so that nothing (a reboot, the service manager) starts the failed release again. A
    journal record on stdin is appended first, with the release it leaves."""
    if not (len(how) == 2 and how[0] != "--run" or len(how) > 1 and how[0] == "--run"):
        raise Refused("usage: stop ROOT SOCKET PROGRAM | stop ROOT --run ARGV...")
    record, previous = read_record(), current_name(root)
    if record is not None:
        append_journal(root, dict(record, previous=previous))
    if how[0] == "--run":
        run_restart(list(how[1:]))
    else:
        supervised(how[0], how[1], start=False)
    link = os.path.join(root, "current")
    if os.path.islink(link):
        os.unlink(link)
        fsync_dir(root)
    out({"stopped": how[-1], "previous": previous})


def prune(root, keep, protect):
    """Remove releases beyond the `keep` newest, never `protect`ed ones or current; return the removed."""
    rel = os.path.join(root, "releases")
    keep_set = set(protect) | {current_name(root)}
    names = sorted((n for n in os.listdir(rel) if is_hex64(n)),
                   key=lambda n: os.stat(os.path.join(rel, n)).st_mtime, reverse=True)
    removed = []
    for n in names:
        if n in keep_set:
            continue
        if len(keep_set & set(names)) < keep:
            keep_set.add(n)
            continue
        rmtree(os.path.join(rel, n))  # pruning never fails a deploy
        removed.append(n)
    for n in os.listdir(rel):
        if n.startswith(".stage-"):
            rmtree(os.path.join(rel, n))
    return removed


def op_prune(root, keep, *protect):
    out({"removed": prune(root, int(keep), protect)})


def read_record():
    """Return the JSON object on stdin (a journal record), or None when stdin is empty."""
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        return None
    try:
        record = from_json(raw)
    except (ValueError, RecursionError):
        raise Refused("journal record is not JSON")
    if not isinstance(record, dict):
        raise Refused("journal record is not an object")
    return record


def append_journal(root, record):
    """Append one record as one line and fsync it; a torn last line (no newline) is ended first, never
    merged into. OSError if the whole line cannot be written."""
    line = to_json(record, compact=True).encode()  # one record, one line
    fd = os.open(os.path.join(root, "state", "journal.jsonl"), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        data = (b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b"") + line + b"\n"
        while data:
            n = os.write(fd, data)
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write")
            data = data[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(line)


def op_journal(root):
    record = read_record()
    if record is None:
        raise Refused("journal record is not JSON")
    out({"appended": append_journal(root, record)})


LOCK_FIELDS = ("holder", "pid", "since", "command", "id")


def lock_path(root):
    return os.path.join(root, "state", "deploy.lock")


def read_lock(root):
    """Return the holder document of the node's fleet deploy lock, {} if it is damaged, None if free."""
    try:
        with open(os.path.join(lock_path(root), "holder.json"), "rb") as f:
            doc = from_json(f.read())
        return doc if isinstance(doc, dict) else {}
    except FileNotFoundError:
        return None if not os.path.isdir(lock_path(root)) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def describe_lock(doc):
    when = doc.get("since")
    when = time_text(when) if isinstance(when, (int, float)) else "?"
    return "fleet deploy lock held by %s (pid %s) running '%s' since %s (run %s)" % (
        doc.get("holder", "unknown (damaged lock)"), doc.get("pid", "?"), doc.get("command", "?"), when,
        doc.get("id", "?"))


def time_text(ts):
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def take_lock(root, durable=True):
    """Take the fleet deploy lock on this node (when the command was given one): a folder
    state/deploy.lock holding holder.json, put in place whole by rename(2) of a temp folder, which
    fails while another holder's lock is there. A lock the controller may break ("break": "any",
    or the holder and pid of its own dead run) is replaced, one breaker at a time, and journaled.
    Refused, naming the holder, if it is held.

    With `durable` False the lock is not yet fsync'd (sync_lock does that): the rename alone makes it
    exclusive; only a node crash could lose it, and the caller syncs it before it changes anything."""
    if not LOCK:
        return
    state = os.path.join(root, "state")
    tmp = os.path.join(state, ".deploy.lock-%d" % os.getpid())
    try:
        os.mkdir(tmp, 0o700)
        doc = {k: LOCK.get(k) for k in LOCK_FIELDS}
        fd = os.open(os.path.join(tmp, "holder.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, to_json(doc).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, lock_path(root))  # a held lock is a folder with a file in it: rename fails
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            held = read_lock(root)
            if held is not None and held.get("id") == LOCK.get("id"):
                return  # ours already (a retry on the same run)
            if not may_break(held):
                raise Refused(describe_lock(held or {}))
            import fcntl

            folder = os.open(state, os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)  # breakers take turns, each checking again
                if read_lock(root) != held:
                    raise Refused(describe_lock(read_lock(root) or {}))
                gone = tmp + "-broken"
                os.rename(lock_path(root), gone)
                os.rename(tmp, lock_path(root))
                append_journal(root, {"action": "lock-broken", "broken": held, "by": doc})
                rmtree(gone)
            finally:
                os.close(folder)
        if durable:
            fsync_dir(state)
    except OSError as exc:
        raise Refused("fleet deploy lock: %s" % exc)
    finally:
        rmtree(tmp)


def sync_lock(root):
    """fsync the lock take_lock(durable=False) put in place: its holder.json and the state folder."""
    if not LOCK:
        return
    try:
        fd = os.open(os.path.join(lock_path(root), "holder.json"), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.join(root, "state"))
    except OSError as exc:
        raise Refused("fleet deploy lock: %s" % exc)


def may_break(held):
    """Whether this command may break the lock `held`: --break-lock breaks any; recover breaks the lock
    of the controller run it recovers from (same holder and pid); any command breaks the lock of a run
    its controller journaled as finished ("ids")."""
    how = LOCK.get("break")
    if how == "any":
        return True
    if not isinstance(how, dict) or held is None:
        return False
    ids = how.get("ids")
    if isinstance(ids, list) and held.get("id") in ids:
        return True  # left by a run the controller's journal shows finished (a node it could not release)
    return "holder" in how and all(held.get(k) == how.get(k) for k in ("holder", "pid"))


def release_lock(root):
    """Drop the node's fleet deploy lock if it is this command's; return whether it did (the end of a
    run releases it with commands.unlock)."""
    lock_id = LOCK.get("id")
    held = read_lock(root)
    if not lock_id or held is None or held.get("id") != lock_id:
        return False
    gone = os.path.join(root, "state", ".deploy.lock-released-%d" % os.getpid())
    os.rename(lock_path(root), gone)
    fsync_dir(os.path.join(root, "state"))
    rmtree(gone)
    return True


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


OPS: "dict[str, Callable[..., None]]" = {
    "probe": op_probe, "have": op_have, "deploy": op_deploy, "stage": op_stage, "retarget": op_retarget,
    "switch": op_switch, "prune": op_prune, "journal": op_journal, "halt": op_halt, "stop": op_stop}


# The fleet deploy lock this command takes (deploy, retarget), from a last "--lock=JSON" argument.
LOCK: "dict[str, Any]" = {}


def main(argv):
    if argv and argv[-1].startswith("--lock="):
        try:
            LOCK.update(from_json(argv.pop()[len("--lock="):]))
        except (ValueError, TypeError, RecursionError):
            raise Refused("bad --lock argument")
    if len(argv) < 2 or argv[0] not in OPS:
        raise Refused("usage: OP ROOT ARGS...")
    if not os.path.isabs(argv[1]):
        raise Refused("root must be absolute")
    OPS[argv[0]](*argv[1:])


def run(argv):
    """Run one command; return its exit code, its error (if any) written as one JSON line."""
    try:
        main(argv)
        return 0
    except Refused as exc:
        sys.stderr.write(to_json({"error": str(exc)}) + "\n")
    except Exception as exc:  # a node-side surprise is still one line for the controller
        sys.stderr.write(to_json({"error": "%s: %s" % (type(exc).__name__, exc)}) + "\n")
    return 1


if __name__ == "__main__":
    code = run(sys.argv[1:])
    # Out without tearing the interpreter down (a measurable part of every command): everything the agent writes
    # is written with os.write or closed where it is written, and stdout and stderr are flushed here.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # the controller went away: nothing is left to tell it
        code = code or 1
    os._exit(code)
