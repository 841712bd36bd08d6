"""The test fleets' facade: the Docker fleets deployctl makes on this machine, for its demo and its tests.

Not part of deploying to your own servers: it needs the docker SDK (`pip install 'deployctl[testfleet]'`),
imported only when a fleet is brought up, listed or taken down. Re-exports only.
"""

from __future__ import annotations

from deployctl.testfleet.bare import SUDO_PASSWORD as BARE_SUDO_PASSWORD
from deployctl.testfleet.bare import down as bare_fleet_down
from deployctl.testfleet.bare import status as bare_fleet_status
from deployctl.testfleet.bare import up as bare_fleet_up
from deployctl.testfleet.bare import write_files as write_bare_fleet_files
from deployctl.testfleet.fleet import fleet_down, fleet_status, fleet_up
from deployctl.testfleet.fleet import write_files as write_fleet_files

__all__ = ["BARE_SUDO_PASSWORD", "bare_fleet_down", "bare_fleet_status", "bare_fleet_up", "fleet_down",
           "fleet_status", "fleet_up", "write_bare_fleet_files", "write_fleet_files"]
