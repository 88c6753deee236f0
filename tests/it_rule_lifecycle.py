"""Bounded gray periods (starts_at / expires_at) and the kill switch (enabled: false)."""

from datetime import datetime, timedelta, timezone

from harness import plugin_config


def ts(delta, fmt="%Y-%m-%dT%H:%M:%SZ"):
    return (datetime.now(timezone.utc) + delta).strftime(fmt)


def gated(name, version, **extra):
    return {"name": name, "when": {"path_prefix": f"/{name}/"}, "version": version, **extra}


HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def it_rules_apply_only_inside_their_time_window(start_envoy):
    envoy = start_envoy(plugin_config([
        gated("expired", "v2", expires_at=ts(-HOUR)),
        gated("future", "v2", starts_at=ts(HOUR)),
        gated("active", "v2", starts_at=ts(-HOUR), expires_at=ts(HOUR)),
        gated("active-offset", "v2",
              starts_at=(datetime.now(timezone.utc) - HOUR).astimezone(
                  timezone(timedelta(hours=5, minutes=30))).isoformat(timespec="milliseconds"),
              expires_at=ts(DAY, "%Y-%m-%dT%H:%M:%S.250Z")),
        gated("open-start", "v2", expires_at=ts(DAY)),
        gated("open-end", "v2", starts_at=ts(-DAY)),
        gated("ended", "v2", starts_at=ts(-DAY), expires_at=ts(-HOUR)),
    ]))
    assert envoy.version("/expired/") == "v1", "expired rule skipped"
    assert envoy.version("/future/") == "v1", "rule not yet started skipped"
    assert envoy.version("/ended/") == "v1"
    assert envoy.version("/active/") == "v2", "rule inside [starts_at, expires_at) applies"
    assert envoy.version("/active-offset/") == "v2", "numeric offsets and fractions"
    assert envoy.version("/open-start/") == "v2"
    assert envoy.version("/open-end/") == "v2"


def it_expired_rule_lets_later_rules_decide(start_envoy):
    envoy = start_envoy(plugin_config([
        {"name": "old", "expires_at": ts(-HOUR), "version": "v-old"},
        {"name": "new", "version": "v-new"},
    ]))
    assert envoy.version("/") == "v-new"


def it_disabled_rule_is_skipped(start_envoy):
    envoy = start_envoy(plugin_config([
        {"name": "off", "enabled": False, "version": "v-off"},
        {"name": "on", "enabled": True, "when": {"path_prefix": "/on/"}, "version": "v-on"},
        {"name": "off-split", "enabled": False, "split": [{"version": "v-off", "percent": 100}]},
    ]))
    assert envoy.version("/", [("x-user-id", "u1")]) == "v1"
    assert envoy.version("/on/", [("x-user-id", "u1")]) == "v-on"
