"""The replication secret of the test suite: every multi-region mesh the tests run authenticates
replication with it, as a production mesh does (a mesh of several regions without a credential
is refused at start).

Set in this process's environment when the test session starts (tests/conftest.py imports this
module), so that `meshgate serve` processes and mesh files with ``${MESH_REPLICATION_SECRET}``
find it.
"""

from __future__ import annotations

import os
import secrets

from meshgate.config import REPLICATION_SECRET_VARIABLE, SecuritySettings
from meshgate.gateway._auth import REPLICATION_SECRET_KEY

__all__ = ["METADATA", "SECRET", "SECURITY", "SECURITY_YAML", "VARIABLE"]

VARIABLE = REPLICATION_SECRET_VARIABLE
# Made per session: what a test's peer must send is never a constant of the repository.
SECRET = os.environ[VARIABLE] = secrets.token_hex(24)
# What a test that plays a peer region sends with its Replicate calls.
METADATA = ((REPLICATION_SECRET_KEY, SECRET),)
# The security block of a mesh built in code.
SECURITY = SecuritySettings(replication_secret=SECRET, replication_secret_variable=VARIABLE)
# The same in a mesh file (under event_mesh:).
SECURITY_YAML = f"  security:\n    replication_secret: ${{{VARIABLE}}}\n"
