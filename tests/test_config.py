"""The sample config documents every option with its real default; overrides apply in order."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import msgspec
import pytest

from aioreg.config import Config, ConfigError, load_config

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "aioreg.toml"


def test_sample_config_is_the_embedded_default() -> None:
    assert load_config(SAMPLE, environ={}) == Config()
    sample = tomllib.loads(SAMPLE.read_text())
    assert sample == msgspec.to_builtins(Config())


def test_every_option_is_documented_in_sample_and_readme() -> None:
    sample_text = SAMPLE.read_text()
    readme = (SAMPLE.parent.parent / "README.md").read_text()
    for section, values in msgspec.to_builtins(Config()).items():
        assert f"[{section}]" in sample_text
        for option in values:
            assert f"\n{option} = " in sample_text, option
            assert f"`{section}.{option}`" in readme, option


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:1"\n[limits]\nmanifest_max_bytes = 10\n')
    env = {"AIOREG_LISTEN": "127.0.0.1:2", "AIOREG_LIMITS_MANIFEST_MAX_BYTES": "20"}
    config = load_config(path, environ=env)
    assert config.server.listen == "127.0.0.1:2"
    assert config.limits.manifest_max_bytes == 20
    config = load_config(path, environ=env, overrides={"server": {"listen": "127.0.0.1:3"}})
    assert config.server.port == 3
    assert load_config(None, environ={"AIOREG_CONFIG": str(path)}).server.port == 1


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nlisten = "nope"\n',
        "[server]\nunknown = 1\n",
        "[storage\n",
        '[limits]\nmanifest_max_bytes = "x"\n',
    ],
)
def test_bad_config_raises_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/aioreg.toml", environ={})


def numeric_options() -> list[tuple[str, str]]:
    return [
        (section, option)
        for section, values in msgspec.to_builtins(Config()).items()
        if isinstance(values, dict)  # not the [[proxy]] list: tests/test_proxy.py
        for option, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


# Options where 0 would make the registry unusable (every manifest too big, no header fits).
ZERO_MAKES_NO_SENSE = {
    ("server", "client_max_header_bytes"),
    ("server", "body_read_timeout"),
    ("server", "header_read_timeout"),
    ("server", "idle_timeout"),
    ("server", "send_timeout"),
    ("storage", "write_buffer_bytes"),
    ("storage", "upload_session_ttl"),
    ("limits", "manifest_max_bytes"),
    ("limits", "manifest_memory_bytes"),
    ("limits", "page_size_max"),
    ("limits", "request_burst"),
    ("auth", "token_ttl"),
    ("auth", "refresh_token_ttl"),
    ("auth", "failed_login_limit"),
    ("auth", "failed_login_user_limit"),
    ("auth", "failed_login_address_limit"),
    ("auth", "failed_login_tracked_max"),
    ("auth", "failed_login_window"),
    ("server", "workers"),
    ("transfer", "zstd_level"),
    # Webhooks: no sender, no wait, no attempt or no outbox would deliver nothing.
    ("webhooks", "concurrency"),
    ("webhooks", "timeout"),
    ("webhooks", "max_attempts"),
    ("webhooks", "backoff_base"),
    ("webhooks", "backoff_max"),
    ("webhooks", "outbox_max_rows"),
    ("webhooks", "poll_interval"),
    ("webhooks", "quota_warning_percent"),
}


@pytest.mark.parametrize(("section", "option"), numeric_options())
def test_every_numeric_option_refuses_values_out_of_range(section: str, option: str) -> None:
    """A new numeric option must carry a range (NonNegativeInt, PositiveFloat, ...)."""
    bad: list[object] = [-1, "-1", "inf"]
    if (section, option) in ZERO_MAKES_NO_SENSE:
        bad.append(0)
    for value in bad:
        with pytest.raises(ConfigError, match=rf"{section}[.]{option}"):
            load_config(None, environ={}, overrides={section: {option: value}})
    env = {f"AIOREG_{section}_{option}".upper(): "-5"}
    with pytest.raises(ConfigError, match=rf"{section}[.]{option}"):
        load_config(None, environ=env)
    if (section, option) not in ZERO_MAKES_NO_SENSE:
        load_config(None, environ={}, overrides={section: {option: 0}})


@pytest.mark.parametrize("listen", ["127.0.0.1:65536", "[::1]:70000", "h:1000000"])
def test_listen_port_out_of_range_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match="0-65535"):
        load_config(None, environ={"AIOREG_LISTEN": listen})


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.1:65535", "[::]:5000"])
def test_listen_ports_in_range(listen: str) -> None:
    assert load_config(None, environ={"AIOREG_LISTEN": listen}).server.listen == listen


def test_unknown_aioreg_variables_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "AIOREG_LISTN": "127.0.0.1:1",
        "AIOREG_LIMITS_MANIFEST_MAX_BYTE": "5",
        "AIOREG_WHATEVER": "1",
        "AIOREG_CONFIG": "",
        "AIOREG_DATA_DIR": "/tmp/x",
        "OTHER_LISTN": "x",
    }
    with caplog.at_level(logging.WARNING, logger="aioreg.config"):
        config = load_config(None, environ=env)
    assert config.storage.data_dir == "/tmp/x"
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 3
    assert warned[0].startswith(
        "ignoring unknown environment variable AIOREG_LIMITS_MANIFEST_MAX_BYTE "
        "(did you mean AIOREG_LIMITS_MANIFEST_MAX_BYTES"
    )
    assert warned[1] == (
        "ignoring unknown environment variable AIOREG_LISTN "
        "(did you mean AIOREG_LISTEN or AIOREG_SERVER_LISTEN?)"
    )
    assert warned[2] == "ignoring unknown environment variable AIOREG_WHATEVER"
