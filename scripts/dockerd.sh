#!/usr/bin/env bash
# Make a Docker engine reachable, or stop the one this script started.
#   scripts/dockerd.sh start   use a running engine; else install Debian's docker.io
#                              (if missing) and start dockerd in the background
#   scripts/dockerd.sh stop    stop dockerd only if `start` started it
# The pid of an engine we started is kept in .deployctl/dockerd.pid.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pidfile="$here/.deployctl/dockerd.pid"
mkdir -p "$here/.deployctl"

engine_up() { docker info >/dev/null 2>&1; }

start() {
  if engine_up; then echo "docker engine already running"; return 0; fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq docker.io >/dev/null
  fi
  echo "starting dockerd"
  nohup dockerd --host unix:///var/run/docker.sock >"$here/.deployctl/dockerd.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if engine_up; then echo "docker engine up"; return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "dockerd did not come up; last lines of .deployctl/dockerd.log:" >&2
  tail -n 20 "$here/.deployctl/dockerd.log" >&2 || true
  exit 1
}

stop() {
  [ -f "$pidfile" ] || { echo "dockerd not started by us: left alone"; return 0; }
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "dockerd stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
