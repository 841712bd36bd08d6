"""The CLI's per-node upload bars: shown only on a terminal, and only once an upload has run ~1 s."""

from __future__ import annotations

import io

import pytest

from deployctl.cli import output


class FakeProgress:
    """Records what rich's Progress would have drawn."""

    def __init__(self, *columns, console=None, transient=False):
        self.tasks, self.started, self.stopped = {}, False, False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def add_task(self, description, total):
        self.tasks[description] = [0, total]
        return description

    def update(self, task, completed):
        self.tasks[task][0] = completed


@pytest.fixture
def uploads(monkeypatch):
    import rich.progress

    clock = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rich.progress, "Progress", FakeProgress)
    return output._Uploads(), clock


def terminal(monkeypatch, yes: bool) -> None:
    from rich.console import Console

    monkeypatch.setattr(output.err, "_console", Console(file=io.StringIO(), force_terminal=yes))


def test_no_bars_for_an_upload_shorter_than_a_second(uploads, monkeypatch):
    terminal(monkeypatch, True)
    bars, clock = uploads
    bars.update("node1", 4096, 10240)
    clock[0] += 0.9
    bars.update("node1", 10240, 10240)
    assert bars.bars is None
    bars.stop()


def test_bars_per_node_once_an_upload_runs_a_second_on_a_terminal(uploads, monkeypatch):
    terminal(monkeypatch, True)
    bars, clock = uploads
    bars.update("node1", 1024, 10240)
    bars.update("node2", 2048, 10240)
    clock[0] += 1.0
    bars.update("node1", 4096, 10240)
    shown = bars.bars
    assert shown.started and shown.tasks == {"node1": [4096, 10240], "node2": [2048, 10240]}
    bars.update("node2", 10240, 10240)
    assert shown.tasks["node2"] == [10240, 10240]
    bars.stop()
    assert shown.stopped and bars.bars is None


def test_no_bars_when_stderr_is_not_a_terminal(uploads, monkeypatch):
    terminal(monkeypatch, False)
    bars, clock = uploads
    bars.update("node1", 1, 10)
    clock[0] += 5
    bars.update("node1", 5, 10)
    assert bars.bars is None


def test_the_progress_sink_routes_upload_events_and_stops_bars_when_the_phase_ends(monkeypatch):
    seen = []
    monkeypatch.setattr(output, "_uploads", type("U", (), {"update": lambda self, *a: seen.append(a),
                                                           "stop": lambda self: seen.append("stop")})())
    monkeypatch.setattr(output.err, "_console", __import__("rich.console").console.Console(file=io.StringIO()))
    output.progress("upload", node="node1", sent=5, total=10)
    output.progress("phase", phase="stage", status="done", seconds=1.0, failures=[])
    assert seen == [("node1", 5, 10), "stop"]


@pytest.mark.parametrize("n, text", [(0, "0.0 KiB"), (10240, "10.0 KiB"), (2**20 - 1, "1024.0 KiB"),
                                     (2**20, "1.0 MiB"), (10 * 2**20 + 2**19, "10.5 MiB")])
def test_sizes_for_people(n, text):
    assert output.size(n) == text


def test_the_watch_screen_takes_a_closed_stdin(monkeypatch):
    """stdin closed (None) and stdout a terminal: no keys to read, the view still shows."""
    from rich.console import Console

    monkeypatch.setattr(output.sys, "stdin", None)
    monkeypatch.setattr(output.out, "_console", Console(file=io.StringIO(), force_terminal=True))
    with output.WatchScreen() as screen:
        assert screen._fd is None

