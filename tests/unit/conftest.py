"""The unit ring's one rig: fleets on the in-memory fake (fakefleet.py), set up once and cloned for each test.

- `rig`: a fresh fleet of eight empty nodes (nothing installed, routers down), an empty journal and three
  signed releases (`rig.artifacts`).
- `one`, `live`, `three`: that fleet after one, two and three good rollouts: every node on release 0, 1
  or 2, the earlier releases kept, gates open, not halted.

The rollouts run once per session; each test gets a clone of its own (state folder, nodes, journal), so
a test may change anything. Values and plain helpers (NODES, OTHERS, every_node, make_rig) are in
fakefleet.py, which tests import as `import fakefleet as ff`: no test imports this file, since with a
conftest.py in each ring the module name `conftest` is whichever of them pytest loaded last.
"""

from __future__ import annotations

import fakefleet as ff
import pytest

from deployctl.ops import rollout as rollout_mod


@pytest.fixture
def rig(tmp_path) -> ff.Rig:
    """A fresh fleet: eight empty nodes, routers not running, an empty journal, three signed artifacts."""
    return ff.make_rig(tmp_path)


@pytest.fixture(scope="session")
def _after(tmp_path_factory) -> list[ff.Rig]:
    """The fleet after one, two and three good rollouts, made once (tests get clones)."""
    rig = ff.make_rig(tmp_path_factory.mktemp("template"))
    out = []
    for art in rig.artifacts:
        rollout_mod.rollout(rig.ctx, art.path)
        out.append(rig.clone(tmp_path_factory.mktemp(f"after-{art.version}")))
    return out


@pytest.fixture
def one(_after, tmp_path) -> ff.Rig:
    """One good rollout: every node on release 0, gates open."""
    return _after[0].clone(tmp_path)


@pytest.fixture
def live(_after, tmp_path) -> ff.Rig:
    """Two good rollouts: every node on release 1, release 0 kept, gates open."""
    return _after[1].clone(tmp_path)


@pytest.fixture
def three(_after, tmp_path) -> ff.Rig:
    """Three good rollouts: every node on release 2, releases 0 and 1 kept, gates open."""
    return _after[2].clone(tmp_path)
