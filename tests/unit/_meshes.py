"""Mesh files the unit tests of config diff share: an edit from OLD to NEW."""

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
