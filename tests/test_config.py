"""The sample config documents every option with its real default; overrides apply in order."""

from __future__ import annotations

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
