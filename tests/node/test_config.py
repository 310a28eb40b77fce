"""node.toml is decoded strictly: every mistake names its location."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, decode_config, load_config
from node.devmode import dev_config

MINIMAL = """
[server]
host = "127.0.0.1"
port = 8080

[[tenants]]
name = "acme"
models = ["bastion-tiny"]
residency = "local-only"
keys = [{ id = "k_0123456789ab", sha256 = "%s" }]

[audit]
enabled = false
""" % ("ab" * 32)


def test_minimal_config_decodes() -> None:
    config = decode_config(MINIMAL)
    assert config.server.port == 8080
    (tenant,) = config.tenants
    assert tenant.name == "acme"
    assert tenant.residency == "local-only"
    assert tenant.redact is True  # safe default: redact before any egress


def test_unknown_key_is_rejected_with_its_location() -> None:
    with pytest.raises(ConfigError) as err:
        decode_config(MINIMAL.replace('residency = "local-only"', 'residncy = "local-only"'))
    assert "residncy" in str(err.value)
    assert "$.tenants[0]" in str(err.value)


def test_otlp_endpoint_is_refused_since_there_is_no_tracing() -> None:
    text = MINIMAL + '\n[metrics]\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\n'
    with pytest.raises(ConfigError) as err:
        decode_config(text)
    message = str(err.value)
    assert "tracing" in message and "not supported" in message and "remove the setting" in message
    assert "$.metrics.otlp_endpoint" in message


def test_wrong_type_is_rejected_with_its_location() -> None:
    with pytest.raises(ConfigError) as err:
        decode_config(MINIMAL.replace("port = 8080", 'port = "eighty"'))
    assert "$.server.port" in str(err.value)
    assert "int" in str(err.value)


def test_out_of_range_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"\$\.server\.port"):
        decode_config(MINIMAL.replace("port = 8080", "port = 70000"))


def test_unknown_residency_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"\$\.tenants\[0\]\.residency"):
        decode_config(MINIMAL.replace('"local-only"', '"anywhere"', 1))


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        decode_config("[server\nport = 1")


def test_duplicate_tenants_are_rejected() -> None:
    doubled = MINIMAL + '\n[[tenants]]\nname = "acme"\n'
    with pytest.raises(ConfigError, match="unique"):
        decode_config(doubled)


def test_a_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(MINIMAL + '\n[[providers]]\napi_key = "sk-live-123"\n')
    with pytest.raises(ConfigError, match="looks like a secret") as err:
        load_config(path)
    assert "sk-live-123" not in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_dev_mode_refuses_a_non_loopback_bind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        dev_config(data_dir=tmp_path, models_file=tmp_path / "models.toml", host="0.0.0.0", port=8000)


def test_dev_mode_on_loopback_builds_a_local_only_tenant(tmp_path: Path) -> None:
    setup = dev_config(data_dir=tmp_path, models_file=tmp_path / "models.toml", host="127.0.0.1", port=0)
    assert setup.config.dev_mode
    (tenant,) = setup.config.tenants
    assert tenant.residency == "local-only"
    # the newcomer's first chat and first embedding both work
    assert tenant.models == setup.config.serve == ("bastion-tiny", "bastion-tiny-embed")
    assert setup.config.audit is not None
    assert (tmp_path / "dev" / "audit-kek.key").stat().st_mode & 0o077 == 0


def test_local_only_in_a_region_list_is_rejected_with_its_location() -> None:
    with pytest.raises(ConfigError, match=r"not a region name.*\$\.tenants\[0\]"):
        decode_config(MINIMAL.replace('residency = "local-only"', 'residency = ["eu-west", "local-only"]'))


def test_a_config_without_an_audit_section_is_refused() -> None:
    without = MINIMAL.replace("[audit]\nenabled = false\n", "")
    with pytest.raises(ConfigError, match=r"no \[audit\] section") as err:
        decode_config(without)
    assert "[audit] enabled = false" in str(err.value)  # says how to run without one, on purpose


def test_audit_enabled_false_is_the_explicit_way_to_run_without_a_log() -> None:
    assert decode_config(MINIMAL).audit is None


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ('enabled = false\npath = "/var/audit.db"', "takes no other audit setting"),
        ('enabled = "no"', r"\$\.audit\.enabled"),
        ("enabled = true", r"missing required field `path` - at `\$\.audit`"),
    ],
)
def test_a_wrong_audit_switch_is_an_error(section: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        decode_config(MINIMAL.replace("[audit]\nenabled = false\n", f"[audit]\n{section}\n"))


def test_audit_enabled_true_with_its_settings_decodes() -> None:
    section = (
        '[audit]\nenabled = true\npath = "a.db"\nkek_env = "KEK"\n'
        'signing_key_file = "s.key"\ncheckpoint_path = "cp"\n'
    )
    config = decode_config(MINIMAL.replace("[audit]\nenabled = false\n", section))
    assert config.audit is not None and config.audit.path == "a.db"


def test_state_defaults_to_this_node_alone() -> None:
    assert decode_config(MINIMAL).state.shared is False


@pytest.mark.parametrize(
    "url",
    ["postgresql://bastion:hunter2@db.internal/bastion", "postgresql://db.internal/bastion?password=hunter2"],
)
def test_a_postgres_password_in_the_file_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_config(MINIMAL + f'\n[state]\npostgres_url = "{url}"\n')
    assert "postgres_url_env" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_postgres_url_without_a_password_is_accepted() -> None:
    config = decode_config(MINIMAL + '\n[state]\npostgres_url = "postgresql://bastion@db.internal/bastion"\n')
    assert config.state.shared


def test_state_takes_one_source_of_the_url() -> None:
    with pytest.raises(ConfigError, match="set one of"):
        decode_config(MINIMAL + '\n[state]\npostgres_url_env = "A"\npostgres_url_file = "url.txt"\n')


def test_postgres_url_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.budgets import postgres_url

    env = decode_config(MINIMAL + '\n[state]\npostgres_url_env = "BASTION_TEST_PG"\n').state
    monkeypatch.delenv("BASTION_TEST_PG", raising=False)
    with pytest.raises(ConfigError, match="BASTION_TEST_PG is empty"):
        postgres_url(env, config_dir=tmp_path)
    monkeypatch.setenv("BASTION_TEST_PG", "postgresql://u:secret@h/db")
    assert postgres_url(env, config_dir=tmp_path) == "postgresql://u:secret@h/db"
    (tmp_path / "pg-url").write_text("postgresql://u:other@h/db\n")
    file = decode_config(MINIMAL + '\n[state]\npostgres_url_file = "pg-url"\n').state
    assert postgres_url(file, config_dir=tmp_path) == "postgresql://u:other@h/db"
