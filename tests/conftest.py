"""Shared by every ring: hypothesis runs without its per-example deadline.

A deadline is a timed test: on two shared cores an example that writes and fsyncs a journal can take
longer than 200 ms without anything being wrong (CI failed so once). The speed targets are
benchmarks in bench/, never assertions on time.
"""

from hypothesis import settings

settings.register_profile("deployctl", deadline=None)
settings.load_profile("deployctl")
