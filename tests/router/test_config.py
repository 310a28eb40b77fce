from __future__ import annotations

import msgspec
import pytest

from router.config import ProviderConfig, TenantPolicy
from tests.router.conftest import decode_config

PROVIDER = """
[[providers]]
name = "oa"
kind = "openai"
base_url = "https://api.openai.com/v1"
region = "us-east"
api_key_env = "OPENAI_API_KEY"
{extra}
[providers.models]
{models}
"""


def _decode(models: str, extra: str = "") -> object:
    return decode_config(PROVIDER.format(models=models, extra=extra))


def test_dated_model_ids_are_accepted() -> None:
    config = decode_config(
        PROVIDER.format(
            extra="",
            models='"gpt-4o-2024-08-06" = { input_per_mtok = 2.5, output_per_mtok = 10 }\n'
            '"claude-3-5-sonnet-20241022" = { input_per_mtok = 3, output_per_mtok = 15 }',
        )
    )
    assert set(config.providers[0].models) == {"gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022"}


@pytest.mark.parametrize("alias", ["gpt-4o", "claude-3-5-sonnet-latest", "gpt-4o-mini"])
def test_floating_alias_is_refused_unless_marked(alias: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="not a dated version"):
        _decode(f'"{alias}" = {{ input_per_mtok = 1, output_per_mtok = 1 }}')
    config = decode_config(
        PROVIDER.format(
            extra="", models=f'"{alias}" = {{ input_per_mtok = 1, output_per_mtok = 1, floating = true }}'
        )
    )
    assert config.providers[0].models[alias].floating


def test_literal_key_is_refused_with_a_clear_message() -> None:
    with pytest.raises(msgspec.ValidationError, match="literal api_key is refused"):
        _decode(
            '"gpt-4o-2024-08-06" = { input_per_mtok = 1, output_per_mtok = 1 }', extra='api_key = "sk-live"'
        )


def test_key_env_and_file_are_exclusive() -> None:
    with pytest.raises(msgspec.ValidationError, match="not both"):
        _decode(
            '"gpt-4o-2024-08-06" = { input_per_mtok = 1, output_per_mtok = 1 }', extra='api_key_file = "/k"'
        )


def test_unknown_fields_and_bad_values_are_errors_with_location() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.providers\[0\]"):
        _decode('"gpt-4o-2024-08-06" = { input_per_mtok = 1, output_per_mtok = 1 }', extra="reigon = 'x'")
    with pytest.raises(msgspec.ValidationError):
        _decode('"gpt-4o-2024-08-06" = { input_per_mtok = -1, output_per_mtok = 1 }')


def test_routes_must_reference_listed_providers_and_models() -> None:
    base = PROVIDER.format(
        extra="", models='"gpt-4o-2024-08-06" = { input_per_mtok = 1, output_per_mtok = 1 }'
    )
    with pytest.raises(msgspec.ValidationError, match="unknown provider"):
        decode_config(base + '[[routes]]\nalias = "x"\nfallbacks = [{ provider = "nope", model = "m" }]\n')
    with pytest.raises(msgspec.ValidationError, match="not listed"):
        decode_config(base + '[[routes]]\nalias = "x"\nfallbacks = [{ provider = "oa", model = "gpt-4o" }]\n')
    with pytest.raises(msgspec.ValidationError, match="needs a local model"):
        decode_config(base + '[[routes]]\nalias = "x"\n')


def test_tenant_policy_defaults_fail_closed() -> None:
    policy = msgspec.json.decode(b"{}", type=TenantPolicy)
    assert policy.residency == "local-only"
    assert policy.redact
    regions = msgspec.json.decode(b'{"residency": ["eu-west"], "rpm": 5}', type=TenantPolicy)
    assert regions.residency == ("eu-west",)
    with pytest.raises(msgspec.ValidationError, match="restore_pii needs redact"):
        msgspec.json.decode(b'{"redact": false, "restore_pii": true}', type=TenantPolicy)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"residency": "anywhere"}', type=TenantPolicy)


def test_provider_config_is_a_strict_struct() -> None:
    assert ProviderConfig.__struct_config__.forbid_unknown_fields
    assert ProviderConfig.__struct_config__.frozen


def test_local_only_is_not_a_region_name() -> None:
    # a region called local-only would let a header or tenant list read "local-only" as a place to go
    with pytest.raises(msgspec.ValidationError, match="'local-only' is not a region name"):
        decode_config(
            PROVIDER.format(
                extra="", models='"gpt-4o-2024-08-06" = { input_per_mtok = 1, output_per_mtok = 1 }'
            ).replace('"us-east"', '"local-only"')
        )
    for residency in (b'["local-only"]', b'["eu-west", "local-only"]'):
        with pytest.raises(msgspec.ValidationError, match="'local-only' is not a region name"):
            msgspec.json.decode(b'{"residency": ' + residency + b"}", type=TenantPolicy)
