"""Mesh files unit tests share: an edit from OLD to NEW (config diff), BASE, two regions and one
rule that the reload tests edit, and ``with_settings`` for the tests of one setting."""

OLD = """\
event_mesh:
  regions:
    - {name: us-west, kind: embedded}
    - {name: eu-central, kind: embedded}
  routing:
    - topic: "orders/*"
      regions: ["us-west", "eu-central"]
    - topic: "inventory/*"
      regions: ["us-west"]
  security:
    replication_secret: ${MESH_REPLICATION_SECRET}
"""

NEW = """\
event_mesh:
  regions:
    - {name: us-west, kind: embedded}
    - {name: eu-central, kind: embedded}
    - {name: ap-south, kind: embedded}
  routing:
    - topic: "orders/*"
      regions: ["us-west"]
    - topic: "payments/>"
      regions: ["ap-south"]
"""

BASE = """\
event_mesh:
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
  routing:
    - topic: "orders/*"
      regions: [us-west, eu-central]
"""


TWO_REGIONS_WITH_SETTINGS = """\
event_mesh:
  regions:
    - name: us-west
      kind: embedded
      gateway: 127.0.0.1:7401
    - name: eu-central
      kind: embedded
      gateway: 127.0.0.1:7402
  settings:
    shutdown_grace: 5s
{settings}
"""


def with_settings(settings: str = "") -> str:
    """Two embedded regions whose ``settings:`` hold ``settings`` (lines indented by four spaces)."""
    return TWO_REGIONS_WITH_SETTINGS.format(settings=settings)
