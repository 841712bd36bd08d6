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



def _captured(monkeypatch):
    """The CLI's two consoles, writing into buffers instead of the terminal."""
    from rich.console import Console

    bufs = {"out": io.StringIO(), "err": io.StringIO()}
    for name, buf in bufs.items():
        monkeypatch.setattr(getattr(output, name), "_console", Console(file=buf, width=200, highlight=False))
    return bufs


HOSTILE = "[/x] [bold]not ours[/bold] [red"  # markup a node or a router could send in any text field


def test_node_text_in_tables_and_progress_is_shown_as_sent_never_read_as_markup(monkeypatch):
    """A router's refusal, a node's reason or digest holding `[/x]` raised MarkupError (rich read it as a
    closing tag): every table cell and progress line shows what the node sent, brackets and all."""
    from deployctl.remote.routers import Answer

    bufs = _captured(monkeypatch)
    output.gate_table({"node1": Answer("node1", 403, {"error": HOSTILE}), "node2": Answer("node2", 200, {
        "gate": HOSTILE, "halted": False, "digest": HOSTILE})})
    output.status_table({"nodes": [{"node": "node1", "release": HOSTILE, "running": None, "gate": HOSTILE,
                                    "halted": False, "errors": 0, "problem": HOSTILE, "last_deploy": None}],
                         "groups": [{"reference": False, "line": HOSTILE}]})
    output.progress("node", node="node1", ok=False, reason=HOSTILE)
    output.progress("warning", message=HOSTILE)
    shown = bufs["out"].getvalue() + bufs["err"].getvalue()
    assert shown.count("[/x]") >= 6 and "[bold]not ours[/bold]" in shown, shown
