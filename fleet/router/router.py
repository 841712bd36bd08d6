#!/usr/bin/env python3
"""order-router: a small simulated order router (standard library only); supervisord starts this file.

It splits parent orders into child orders, sends them to an in-process simulated venue, and
never routes more than a parent's quantity. Orders flow only while the gate is open. The gate
opens only for the digest of the release folder this file runs from (docs/node-layout.md), and
a halt file in the state dir keeps it shut across restarts.

This file is the command line and the router's life: parse the flags, load router.json, hash the
release, serve. argparse is not used: it costs start-up time, and every node restarts at once on
a deploy. The modules beside it are the service, each one concept: httpwire (strict HTTP, strict
JSON, HttpError), book (order bodies, parent book, venue), service (the Router object, durable
writes, the log), release (router.json and the release digest), endpoints (routes and server).
"""

import sys

# A __pycache__ in the release folder would change its digest, so never write bytecode, even
# when started without -B; this must come before the imports of the modules beside this file.
sys.dont_write_bytecode = True

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402

# Import the modules beside this file from the very folder whose digest the router reports,
# also when started with -I or -P (no script folder on sys.path). Python puts the resolved
# folder first already; this only adds it when it is missing.
RELEASE_DIR = os.path.dirname(os.path.realpath(__file__))
if not sys.path or sys.path[0] != RELEASE_DIR:
    sys.path.insert(0, RELEASE_DIR)

from endpoints import Handler, RouterServer  # noqa: E402
from release import CONFIG_NAME, ConfigError, load_config, release_digest  # noqa: E402
from service import Router, log  # noqa: E402

USAGE = "usage: router [--state-dir DIR] [--port PORT] [--host ADDRESS] [--check]"


class Options:
    """The command line: --state-dir (required unless --check), --port, --host, --check."""

    def __init__(self):
        self.state_dir, self.port, self.host, self.check = None, 8080, "0.0.0.0", False


def usage_error(message):
    """Print the usage and one error line, exit 2 (as argparse would; argparse costs start-up time)."""
    sys.stderr.write(f"{USAGE}\nrouter: error: {message}\n")
    sys.exit(2)


def parse_args(argv):
    """Return the parsed command line; a usage error exits 2."""
    args, opts = list(sys.argv[1:] if argv is None else argv), Options()
    while args:
        arg = args.pop(0)
        name, equals, value = arg.partition("=")
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            sys.exit(0)
        if arg == "--check":
            opts.check = True
        elif name in ("--state-dir", "--port", "--host"):
            if not equals:
                if not args:
                    usage_error(f"argument {name}: expected one argument")
                value = args.pop(0)
            if name == "--port":
                if not re.fullmatch(r"[0-9]{1,5}", value) or int(value) > 65535:
                    usage_error(f"argument --port: invalid port {value!r}")
                value = int(value)
            setattr(opts, name[2:].replace("-", "_"), value)
        else:
            usage_error(f"unrecognized arguments: {arg}")
    if not opts.check and not opts.state_dir:
        usage_error("--state-dir is required unless --check is given")
    return opts


def serve(args, router):
    """Serve HTTP until SIGTERM or Ctrl-C; return the exit code (1 if the port cannot be bound)."""
    try:
        server = RouterServer((args.host, args.port), Handler)
    except OSError as error:
        log(f"cannot listen on {args.host}:{args.port}: {error.strerror}")
        return 1
    server.router = router
    # SIGTERM (supervisor stop) ends serve_forever through SystemExit, so the socket closes cleanly.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    host, port = server.server_address[:2]
    log(f"serving {router.config['service']} {router.config['version']} digest {router.digest} "
        f"on {host}:{port}: gate closed, halted {str(router.is_halted()).lower()}")
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        log("stopped")
    return 0


def main(release_dir, argv=None):
    """Run the router from release_dir; return 0, 2 on a config or state dir error, 1 if it cannot listen.

    release_dir is the folder the modules were imported from: the digest it reports is theirs.
    """
    args = parse_args(argv)
    try:
        config = load_config(os.path.join(release_dir, CONFIG_NAME))
        digest = release_digest(release_dir)
    except ConfigError as error:
        log(str(error))
        return 2
    except OSError as error:
        log(f"cannot compute the release digest of {release_dir}: {error}")
        return 2
    if args.check:
        print(json.dumps({"digest": digest, "version": config["version"]}))
        return 0
    if not os.path.isdir(args.state_dir):
        log(f"state dir {args.state_dir} is not a directory")
        return 2
    return serve(args, Router(config, digest, release_dir, args.state_dir))


if __name__ == "__main__":
    exit_code = main(RELEASE_DIR)
    # Every write the router makes (halt flag, journal) is fsynced as it is made: skip the
    # interpreter's teardown (request threads, freeing modules) so a restart frees the CPU sooner.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
