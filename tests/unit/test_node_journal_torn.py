"""The node's journal (state/journal.jsonl): a torn last line is ended, never merged into the next record.

Both writers are covered: the node agent (deployctl/node_agent.py) and the router (fleet/router/service.py).
"""

from __future__ import annotations

import json

from deployctl.remote import commands
from test_node_agent import answer, root, run  # noqa: F401  (root is a fixture)
from test_router import service_module

TORN = b'{"action":"switch","dig'


def test_the_agent_ends_a_torn_line_before_its_record(root):  # noqa: F811
    path = root / "state" / "journal.jsonl"
    path.write_bytes(b'{"action":"a"}\n' + TORN)
    answer(run(commands.journal_append(str(root)), b'{"action":"b"}'))
    assert path.read_bytes() == b'{"action":"a"}\n' + TORN + b'\n{"action":"b"}\n'
    assert json.loads(path.read_bytes().splitlines()[-1]) == {"action": "b"}


def test_the_router_ends_a_torn_line_before_its_record(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(TORN)
    service_module.append_durably(str(path), b'{"action":"gate-open"}\n')
    service_module.append_durably(str(path), b'{"action":"halt"}\n')
    assert path.read_bytes() == TORN + b'\n{"action":"gate-open"}\n{"action":"halt"}\n'
