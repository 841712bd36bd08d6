"""The node agent as the controller sends it: node/agent.py packed into `python3 -I -S -c BOOT` arguments.

A node runs this controller's own copy of the agent, never one installed on it. The packed program is
kept in the controller's state folder (cache_program_in) so that a command does not compile it again.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import marshal
import os
import types
import zlib
from pathlib import Path

AGENT_PATH = Path(__file__).resolve().parents[1] / "node" / "agent.py"
AGENT = AGENT_PATH.read_text()

# The agent's first three arguments: the magic number of the bytecode this controller's Python
# writes, that bytecode (marshal, zlib, base64) and the source (zlib, base64). A node whose Python
# has the same magic number runs the bytecode; any other compiles the source, as before. Either way
# it is this controller's copy of node/agent.py. Compiling the agent on the node cost every command a
# large share of a probe's CPU on each node (docs/distribution.md, "Figures behind the code").
BOOT = """import sys
a = sys.argv
m = getattr(sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", b"")
import binascii, zlib
if m.hex() == a[1]:
    import marshal
    c = marshal.loads(zlib.decompress(binascii.a2b_base64(a[2])))
else:
    c = compile(zlib.decompress(binascii.a2b_base64(a[3])), "agent.py", "exec", dont_inherit=True)
del a[1:4]
exec(c, {"__name__": "__main__", "__builtins__": __builtins__})"""


_program_cache: list[Path] = []  # the folder agent_program keeps the packed program in (cache_program_in)


def cache_program_in(folder: Path) -> None:
    """Keep the packed agent program in `folder` (the controller's state folder) for later processes.
    Compiling and packing node/agent.py was a measurable cost of every command before its first
    connection (Python's own bytecode cache is not written under PYTHONDONTWRITEBYTECODE, nor in a
    read-only install); reading it back costs a small fraction of that. The file is named by the sha256
    of the source and Python's magic number and carries the sha256 of its content, checked on every read."""
    _program_cache[:] = [Path(folder)]


@functools.lru_cache(maxsize=4)
def agent_program(source: str | None = None) -> tuple[str, str, str, str]:
    """BOOT and its three arguments for `source` (node/agent.py by default, kept packed in the folder
    given to cache_program_in when there is one); what follows them is OP ROOT ARGS..."""
    import importlib.util

    magic = importlib.util.MAGIC_NUMBER.hex()
    if source is not None or not _program_cache:
        return (BOOT, magic) + _pack_program(source or AGENT)
    key = hashlib.sha256(f"{PACKING}\0{magic}\0{AGENT}".encode()).hexdigest()[:32]
    path = _program_cache[0] / f"agent-{key}.txt"
    try:
        code, src, check = path.read_text("ascii").split("\n")
        if _check(code, src) == check:
            return BOOT, magic, code, src
    except (OSError, ValueError):
        pass
    code, src = _pack_program(AGENT)
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text("\n".join([code, src, _check(code, src)]), "ascii")
        os.replace(tmp, path)
        for old in path.parent.glob("agent-*.txt"):  # programs of earlier versions of the source
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only state folder: packed again by the next command
    return BOOT, magic, code, src


PACKING = 2  # how _pack_program packs: part of the cache key


def _check(code: str, src: str) -> str:
    return hashlib.sha256(f"{code}\n{src}".encode()).hexdigest()


def _pack_program(source: str) -> tuple[str, str]:
    """The bytecode (docstrings and line tables left out: the agent reports errors as one line, never
    a traceback: about half the command line) and the source, each zlib'd and base64'd."""
    def pack(data: bytes) -> str:
        return binascii.b2a_base64(zlib.compress(data, 9), newline=False).decode("ascii")

    def bare(code: types.CodeType) -> types.CodeType:
        consts = tuple(bare(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        return code.replace(co_consts=consts, co_linetable=b"")

    code = compile(source, "agent.py", "exec", dont_inherit=True, optimize=2)
    return pack(marshal.dumps(bare(code))), pack(source.encode())
