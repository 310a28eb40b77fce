"""Every model name a tenant, route or ``serve`` gives must lead to a model or an alias."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, decode_config
from node.served import router_config, served_models
from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from serving.models import ModelsFile, load_models_file
from serving.rerank import LocalReranker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models() -> ModelsFile:
    return load_models_file(ROOT / "models.toml")


def _config(tenants: dict[str, str], extra: str = "") -> str:
    return (
        "[audit]\nenabled = false\n"
        + "".join(
            f'[[tenants]]\nname = "{t}"\nmodels = {m}\nresidency = "local-only"\n' for t, m in tenants.items()
        )
        + extra
    )


def test_the_named_models_are_served(models: ModelsFile) -> None:
    config = decode_config(_config({"acme": '["bastion-tiny"]'}))
    assert served_models(config, models) == ["bastion-tiny"]


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        # every name misspelt: the node used to start, serve nothing and report ready
        (
            {"acme": '["bastion-tiyn"]'},
            "tenant 'acme' names model 'bastion-tiyn', which is neither a model in the models file nor a "
            "route alias; did you mean 'bastion-tiny'?",
        ),
        # one good name does not excuse a bad one
        (
            {"acme": '["bastion-tiny"]', "globex": '["bastoin-tiny", "bastion-tiny"]'},
            "tenant 'globex' names model 'bastoin-tiny'",
        ),
        ({"acme": '["chta"]'}, "did you mean 'chat'?"),
        (
            {"acme": '["zzz-unrelated"]'},
            "(known: bastion-tiny, bastion-tiny-embed, bastion-tiny-rerank, chat)",
        ),
    ],
)
def test_a_name_no_model_or_alias_has_fails_naming_tenant_name_and_closest(
    models: ModelsFile, tenants: dict[str, str], message: str
) -> None:
    config = decode_config(_config(tenants, '[[routes]]\nalias = "chat"\nlocal = "bastion-tiny"\n'))
    with pytest.raises(ConfigError) as err:
        served_models(config, models)
    assert message in str(err.value)


def test_a_route_alias_is_a_valid_tenant_model(models: ModelsFile) -> None:
    config = decode_config(
        _config({"acme": '["chat"]'}, '[[routes]]\nalias = "chat"\nlocal = "bastion-tiny"\n')
    )
    assert served_models(config, models) == ["bastion-tiny"]


def test_a_misspelt_route_local_model_fails(models: ModelsFile) -> None:
    config = decode_config(
        _config({"acme": '["chat"]'}, '[[routes]]\nalias = "chat"\nlocal = "bastion-tini"\n')
    )
    with pytest.raises(ConfigError, match=r"route 'chat' names local model 'bastion-tini'.*'bastion-tiny'"):
        served_models(config, models)


def test_a_model_serve_leaves_out_is_named(models: ModelsFile) -> None:
    config = decode_config("serve = []\n" + _config({"acme": '["bastion-tiny"]'}))
    with pytest.raises(
        ConfigError, match="tenant 'acme' names model 'bastion-tiny', which `serve` leaves out"
    ):
        served_models(config, models)
    with pytest.raises(ConfigError, match=r"`serve` names model 'bastion-tinny'.*mean 'bastion-tiny'"):
        served_models(decode_config('serve = ["bastion-tinny"]\n[audit]\nenabled = false\n'), models)


def test_a_free_text_redaction_model_is_served_or_refused(models: ModelsFile) -> None:
    tenant = (
        '[audit]\nenabled = false\n[[tenants]]\nname = "ward"\nresidency = ["eu-west"]\n'
        '[tenants.redaction]\nphone_regions = ["DE", "AT"]\nner_model = "{model}"\n'
    )
    assert served_models(decode_config(tenant.format(model="bastion-tiny")), models) == ["bastion-tiny"]
    with pytest.raises(ConfigError, match=r"redaction\.ner_model 'bastion-tiyn', which is not in the models"):
        served_models(decode_config(tenant.format(model="bastion-tiyn")), models)
    with pytest.raises(ConfigError, match=r"redaction\.ner_model 'bastion-tiny', which `serve` leaves out"):
        served_models(decode_config("serve = []\n" + tenant.format(model="bastion-tiny")), models)


def test_a_tenant_may_name_an_embedding_model_and_it_is_served(models: ModelsFile) -> None:
    config = decode_config(_config({"acme": '["bastion-tiny", "bastion-tiny-embed"]'}))
    assert served_models(config, models) == ["bastion-tiny", "bastion-tiny-embed"]


def test_a_route_to_an_embedding_model_is_refused(models: ModelsFile) -> None:
    config = decode_config(
        _config({"acme": '["chat"]'}, '[[routes]]\nalias = "chat"\nlocal = "bastion-tiny-embed"\n')
    )
    with pytest.raises(ConfigError, match="names local model 'bastion-tiny-embed', an embedding model"):
        served_models(config, models)


def test_the_router_gets_no_alias_for_an_embedding_model(models: ModelsFile, tmp_path: Path) -> None:
    """At start-up and on every reload: chat never reaches an embedding engine through the router."""
    config = decode_config(_config({"acme": '["bastion-tiny", "bastion-tiny-embed"]'}))
    local = {
        "bastion-tiny": LocalEngine(models.get("bastion-tiny"), tmp_path),
        "bastion-tiny-embed": LocalEmbedder(models.get("bastion-tiny-embed"), tmp_path),
    }
    assert [r.alias for r in router_config(config, local).routes] == ["bastion-tiny"]


_AUDITED = 'path = "a.db"\nkek_env = "K"\nsigning_key_file = "s.key"\ncheckpoint_path = "cp"\n'


def _reranking(reranker: str, serve: str = "") -> str:
    base = _config({"acme": '["bastion-tiny", "bastion-tiny-embed"]'}).replace("enabled = false\n", _AUDITED)
    return serve + base + f'[context]\nembedding_model = "bastion-tiny-embed"\nreranker = "{reranker}"\n'


def test_the_context_reranker_is_served_and_never_routed(models: ModelsFile, tmp_path: Path) -> None:
    config = decode_config(_reranking("bastion-tiny-rerank"))
    assert served_models(config, models) == ["bastion-tiny", "bastion-tiny-embed", "bastion-tiny-rerank"]
    local = {
        "bastion-tiny": LocalEngine(models.get("bastion-tiny"), tmp_path),
        "bastion-tiny-rerank": LocalReranker(models.get("bastion-tiny-rerank"), tmp_path),
    }
    assert [r.alias for r in router_config(config, local).routes] == ["bastion-tiny"]


@pytest.mark.parametrize(
    ("reranker", "serve", "message"),
    [
        (
            "bastion-tiny-rerak",
            "",
            "[context] reranker 'bastion-tiny-rerak' is not in the models file; did you "
            "mean 'bastion-tiny-rerank'?",
        ),
        (
            "bastion-tiny-embed",
            "",
            "[context] reranker 'bastion-tiny-embed' has task = \"embed\"",
        ),
        ("bastion-tiny", "", "[context] reranker 'bastion-tiny' has task = \"generate\""),
        (
            "bastion-tiny-rerank",
            'serve = ["bastion-tiny", "bastion-tiny-embed"]\n',
            "[context] reranker 'bastion-tiny-rerank' is a model `serve` leaves out",
        ),
    ],
)
def test_a_misconfigured_reranker_refuses_to_start_naming_it(
    models: ModelsFile, reranker: str, serve: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        served_models(decode_config(_reranking(reranker, serve)), models)
    assert message in str(caught.value)


def test_a_reranker_is_neither_a_route_nor_a_tenant_model(models: ModelsFile) -> None:
    routed = _config({"acme": '["chat"]'}, '[[routes]]\nalias = "chat"\nlocal = "bastion-tiny-rerank"\n')
    with pytest.raises(ConfigError, match="names local model 'bastion-tiny-rerank', a reranker"):
        served_models(decode_config(routed), models)
    with pytest.raises(ConfigError, match="names model 'bastion-tiny-rerank', a reranker"):
        served_models(decode_config(_config({"acme": '["bastion-tiny-rerank"]'})), models)
