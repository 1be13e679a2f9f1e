"""Config: TOML plus MRAGW_<SECTION>__<KEY> overrides; invalid values name their key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.config import (
    Config,
    ConfigError,
    NodeSection,
    build_config,
    default_database_url,
    load_config,
    write_config,
)


def test_written_config_loads_back_identically(tmp_path: Path) -> None:
    config = Config(home=tmp_path, node=NodeSection(admin="JP", timezone="Asia/Tokyo"))
    write_config(config)
    loaded = load_config(tmp_path, environ={})
    assert loaded == config
    assert loaded.database_url == default_database_url(tmp_path)


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    config = build_config(
        tmp_path,
        {"node": {"admin": "JP"}, "limits": {"batch_entries": 100}},
        {"MRAGW_LIMITS__BATCH_ENTRIES": "300", "MRAGW_SERVER__LISTEN": "127.0.0.1:9000"},
    )
    assert config.limits.batch_entries == 300
    assert config.server.listen == "127.0.0.1:9000"


@pytest.mark.parametrize(
    ("document", "environ", "names"),
    [
        pytest.param({"node": {"admin": "japan"}}, {}, "node.admin", id="bad-admin"),
        pytest.param(
            {"node": {"admin": "JP", "timezone": "Mars/Base"}},
            {},
            "node.timezone",
            id="bad-timezone",
        ),
        pytest.param(
            {"node": {"admin": "JP"}, "server": {"listen": "nowhere"}},
            {},
            "server.listen",
            id="bad-listen",
        ),
        pytest.param(
            {"node": {"admin": "JP"}, "server": {"listen": "1.2.3.4:70000"}},
            {},
            "server.listen",
            id="port-out-of-range",
        ),
        pytest.param(
            {"node": {"admin": "JP"}},
            {"MRAGW_LIMITS__BATCH_ENTRIES": "many"},
            "MRAGW_LIMITS__BATCH_ENTRIES",
            id="env-not-int",
        ),
        pytest.param(
            {"node": {"admin": "JP"}},
            {"MRAGW_LIMITS__BATCH_ENTRIES": "0"},
            "limits.batch_entries",
            id="env-not-positive",
        ),
        pytest.param(
            {"node": {"admin": "JP"}},
            {"MRAGW_SERVER__LISTN": "x"},
            "MRAGW_SERVER__LISTN",
            id="env-unknown-key",
        ),
        pytest.param(
            {"node": {"admin": "JP", "colour": "red"}}, {}, "node.colour", id="unknown-key"
        ),
        pytest.param({"node": {"admin": "JP"}, "nodes": {}}, {}, "nodes", id="unknown-section"),
        pytest.param(
            {"node": {"admin": "JP"}, "database": {"url": "mysql://x"}},
            {},
            "database.url",
            id="unsupported-db",
        ),
        pytest.param(
            {"node": {"admin": "JP"}, "limits": {"publish_chunk": 50000}},
            {},
            "limits.publish_chunk",
            id="chunk-too-large",
        ),
        pytest.param(
            {"node": {"admin": "JP"}, "replication": {"silent_after_s": -1.0}},
            {},
            "replication.silent_after_s",
            id="negative-silent-after",
        ),
        pytest.param(
            {"node": {"admin": "JP"}, "limits": {"batch_entries": True}},
            {},
            "limits.batch_entries",
            id="bool-is-not-int",
        ),
    ],
)
def test_invalid_config_names_the_key(
    tmp_path: Path, document: dict[str, object], environ: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        build_config(tmp_path, document, environ)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mragw init"):
        load_config(tmp_path, {})
    (tmp_path / "mragw.toml").write_text("[node\nadmin=", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path, {})


def test_today_is_in_the_configured_time_zone(tmp_path: Path) -> None:
    moment = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    tokyo = build_config(tmp_path, {"node": {"admin": "JP", "timezone": "Asia/Tokyo"}}, {})
    utc = build_config(tmp_path, {"node": {"admin": "JP"}}, {})
    assert tokyo.today(moment).isoformat() == "2026-11-28"
    assert utc.today(moment).isoformat() == "2026-11-27"
