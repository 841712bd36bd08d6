"""cli/streams.py's SafeStream: a write or flush that fails is dropped, never raised (process ring:
tests/process/cli/test_cli_closed_streams.py runs the CLI itself with its streams closed or broken)."""

from __future__ import annotations

import io
import os

from deployctl.cli.streams import SafeStream


def test_a_stream_into_a_gone_reader_drops_the_output_and_points_its_descriptor_at_dev_null():
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        safe = SafeStream(stream)
        assert safe.write("lost\n") == 5
        safe.flush()  # EPIPE, dropped
        assert safe.broken and not safe.isatty()
        assert os.fstat(write_end).st_rdev == os.stat(os.devnull).st_rdev
        stream.write("still buffered\n")
        stream.flush()  # what the interpreter does at exit: no BrokenPipeError any more


def test_a_closed_stream_and_none_take_writes_and_flushes():
    closed = io.StringIO()
    closed.close()
    for stream in (closed, None):
        safe = SafeStream(stream)
        assert safe.write("lost") == 4
        safe.flush()
        assert safe.broken and not safe.isatty() and safe.encoding == "utf-8"


class Busy(io.StringIO):
    """A stream on a non-blocking descriptor whose reader is slow: the first write meets EAGAIN."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = True

    def write(self, text: str) -> int:
        if self.busy:
            self.busy = False
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().write(text)


def test_a_busy_stream_loses_that_write_only():
    stream = Busy()
    safe = SafeStream(stream)
    safe.write("lost\n")
    safe.write("kept\n")
    assert not safe.broken and stream.getvalue() == "kept\n"
