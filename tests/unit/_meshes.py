"""Mesh files unit tests share: an edit from OLD to NEW (config diff), and BASE, two regions and one
rule that the reload tests edit."""

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
