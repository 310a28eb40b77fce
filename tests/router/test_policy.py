"""The residency decision as a pure function: ``x-bastion-residency`` may tighten, never loosen."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import TenantPolicy
from router.policy import Residency, effective_residency
from serving.errors import BadResidencyHeaderError
from tests.router.conftest import policy

REGIONS = frozenset({"eu-west", "eu-central", "us-east"})
EU = policy(residency=["eu-west", "eu-central"])
LOCAL = policy(residency="local-only")


def _residency(tenant: TenantPolicy, *values: str) -> Residency:
    return effective_residency(tenant, values, regions=REGIONS)


LOCAL_ONLY = Residency(local_only=True)


@pytest.mark.parametrize(
    "values",
    [
        ("local-only",),
        ("eu-west, local-only",),  # one value, as a proxy joins two lines (RFC 9110 5.3)
        ("local-only,eu-west",),
        ("eu-west", "local-only"),  # two lines, the tightening one second
        ("local-only", "eu-west"),
        (" LOCAL-ONLY\t",),
        ("eu-west,eu-central", "eu-central, Local-Only"),
    ],
)
def test_local_only_anywhere_makes_the_request_local_only(values: tuple[str, ...]) -> None:
    assert _residency(EU, *values) == LOCAL_ONLY
    assert _residency(LOCAL, *values) == LOCAL_ONLY


def test_no_header_is_the_tenants_residency() -> None:
    assert _residency(EU) == Residency(local_only=False, regions=frozenset({"eu-west", "eu-central"}))
    assert _residency(LOCAL) == LOCAL_ONLY


def test_regions_narrow_the_tenants_and_never_widen_them() -> None:
    assert _residency(EU, "eu-central") == Residency(local_only=False, regions=frozenset({"eu-central"}))
    assert _residency(EU, "EU-Central , eu-west", "eu-west") == _residency(EU)
    # a configured region outside the tenant's: nothing external is left, not a widening
    assert _residency(EU, "us-east") == Residency(local_only=False, regions=frozenset())
    assert _residency(LOCAL, "eu-west, us-east") == LOCAL_ONLY


def test_the_tenants_own_regions_are_known_without_a_provider() -> None:
    tenant = policy(residency=["ap-south"])
    assert _residency(tenant, "ap-south") == Residency(local_only=False, regions=frozenset({"ap-south"}))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (("",), "empty element"),
        (("  ",), "empty element"),
        (("eu-west,,eu-central",), "empty element"),
        (("eu-west,",), "empty element"),
        (("eu-west", ""), "empty element"),
        (("mars-1",), "unknown token 'mars-1'"),
        (("local_only",), "unknown token 'local_only'"),
        (("localonly, eu-west",), "unknown token 'localonly'"),
        (("eu-west", "local-only; eu-west"), "unknown token 'local-only; eu-west'"),
        # a region given by some other tenant's list, or no one's, is not a region here
        (("ap-south",), "unknown token 'ap-south'"),
        # even next to local-only: a header that cannot be read is refused, not guessed at
        (("local-only, mars-1",), "unknown token 'mars-1'"),
    ],
)
def test_an_unreadable_header_is_a_400_naming_the_element(values: tuple[str, ...], named: str) -> None:
    for tenant in (EU, LOCAL):
        with pytest.raises(BadResidencyHeaderError) as info:
            _residency(tenant, *values)
        assert info.value.status_code == 400
        assert info.value.code == "bad_residency_header"
        assert info.value.param == "x-bastion-residency"
        assert named in info.value.message


def test_a_long_unknown_token_is_cut_in_the_message() -> None:
    with pytest.raises(BadResidencyHeaderError) as info:
        _residency(EU, "x" * 5000)
    assert len(info.value.message) < 300


# -- the invariant, generatively ---------------------------------------------------------------------

_TOKENS = st.sampled_from(
    ["local-only", "eu-west", "eu-central", "us-east", "ap-south", "local", "only", "local_only", "*", ""]
)


@st.composite
def _element(draw: st.DrawFn) -> str:
    token = draw(_TOKENS)
    token = "".join(c.upper() if draw(st.booleans()) else c for c in token)
    return draw(st.sampled_from(["", " ", "\t", "  "])) + token + draw(st.sampled_from(["", " ", "\t"]))


_VALUES = st.lists(st.lists(_element(), min_size=1, max_size=4).map(",".join), max_size=4)
_TENANTS = st.one_of(
    st.just(LOCAL),
    st.lists(st.sampled_from(["eu-west", "eu-central", "us-east", "ap-south"]), min_size=1, unique=True).map(
        lambda regions: policy(residency=regions)
    ),
)


@settings(max_examples=500, deadline=None)
@given(tenant=_TENANTS, values=_VALUES)
def test_the_header_never_loosens(tenant: TenantPolicy, values: list[str]) -> None:
    elements = [e.strip(" \t").lower() for v in values for e in v.split(",")]
    try:
        got = effective_residency(tenant, values, regions=REGIONS)
    except BadResidencyHeaderError:
        known = REGIONS | (set(tenant.residency) if isinstance(tenant.residency, tuple) else set())
        assert any(e != "local-only" and e not in known for e in elements)
        return
    if tenant.residency == "local-only" or "local-only" in elements:
        assert got == LOCAL_ONLY
    else:
        allowed = frozenset(tenant.residency)
        assert got == Residency(local_only=False, regions=allowed & set(elements) if elements else allowed)
