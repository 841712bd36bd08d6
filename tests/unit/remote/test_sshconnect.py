"""sshconnect.import_paramiko: paramiko without invoke, and invoke still importable afterwards (fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from deployctl.remote import sshconnect
paramiko = sshconnect.import_paramiko()
assert "invoke" not in sys.modules, "invoke was imported"
assert paramiko.config.invoke is None
import invoke  # a user of the library can still import it
assert invoke.__name__ == "invoke" and sshconnect.import_paramiko() is paramiko
print("ok")
"""


def test_paramiko_comes_without_invoke_and_invoke_stays_importable():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


def test_an_invoke_imported_first_is_left_alone():
    code = ("import invoke, sys\nfrom deployctl.remote import sshconnect\n"
            "assert sshconnect.import_paramiko().config.invoke is invoke\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
