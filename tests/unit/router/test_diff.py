"""The routing effect of an edit (``meshgate config diff``)."""

from __future__ import annotations

from meshgate._routing_diff import diff_routing, probe_topics
from meshgate.config import load_config_text
from tests.unit._meshes import NEW, OLD


def test_diff_reports_rules_regions_links_and_topics() -> None:
    old, new = load_config_text(OLD, "old.yaml"), load_config_text(NEW, "new.yaml")
    diff = diff_routing(old, new)
    assert [(r.index, r.topic) for r in diff.rules_added] == [(1, "payments/>")]
    assert [(r.index, r.topic, r.line) for r in diff.rules_removed] == [(1, "inventory/*", 8)]
    assert [(c.old.regions, c.new.regions) for c in diff.rules_changed] == [(("us-west", "eu-central"), ("us-west",))]
    assert diff.regions_added == ("ap-south",)
    assert diff.regions_removed == ()
    assert diff.links_added == (("ap-south", "us-west"), ("eu-central", "ap-south"), ("us-west", "ap-south"))
    assert diff.links_removed == (("us-west", "eu-central"),)
    assert diff.probes == ("inventory/x", "orders/x", "payments/x")
    changes = {(t.origin, t.topic): (t.old, t.new) for t in diff.topics}
    assert changes == {
        ("us-west", "orders/x"): (("eu-central", "us-west"), ("us-west",)),
        ("us-west", "payments/x"): (("us-west",), ("ap-south", "us-west")),
        ("eu-central", "inventory/x"): (("eu-central", "us-west"), ("eu-central",)),
        ("eu-central", "payments/x"): (("eu-central",), ("ap-south", "eu-central")),
    }
    assert diff.routing_changed
    data = diff.to_json()
    assert data["routing_changed"] is True
    assert data["links"] == {
        "added": [
            {"origin": "ap-south", "destination": "us-west"},
            {"origin": "eu-central", "destination": "ap-south"},
            {"origin": "us-west", "destination": "ap-south"},
        ],
        "removed": [{"origin": "us-west", "destination": "eu-central"}],
    }


def test_identical_files_have_no_change() -> None:
    old = load_config_text(OLD)
    diff = diff_routing(old, load_config_text(OLD))
    assert not diff.changed
    assert not diff.routing_changed


def test_reordering_rules_is_not_a_routing_change() -> None:
    swapped = (
        OLD.replace('"orders/*"', '"TMP"').replace('"inventory/*"', '"orders/*"').replace('"TMP"', '"inventory/*"')
    )
    swapped = swapped.replace('["us-west", "eu-central"]', '["A"]').replace('["us-west"]', '["us-west", "eu-central"]')
    swapped = swapped.replace('["A"]', '["us-west"]')
    diff = diff_routing(load_config_text(OLD), load_config_text(swapped))
    assert not diff.routing_changed
    assert not diff.rules_added and not diff.rules_removed and not diff.rules_changed


def test_removed_link() -> None:
    new = OLD.replace('regions: ["us-west"]', 'regions: ["eu-central"]').replace(
        'regions: ["us-west", "eu-central"]', 'regions: ["eu-central"]'
    )
    diff = diff_routing(load_config_text(OLD), load_config_text(new))
    assert diff.links_removed == (("eu-central", "us-west"),)
    assert diff.links_added == ()


def test_probe_topics_replace_wildcards() -> None:
    config = load_config_text(NEW.replace('"payments/>"', '"payments/*/>"'))
    assert probe_topics(config) == ("orders/x", "payments/x/x")
