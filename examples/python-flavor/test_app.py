"""The plugin's logic, natively with pytest: no wasm, no host."""

import pytest

from infrakit_plugin import Allocation, Description, Health, Index, InstanceSpec, Invalid, testing

from app import UptimeFlavor

PROPS = '{"Init": ["systemctl start app"], "Tags": {"role": "web"}, "MinUptime": 30}'


def test_prepare_adds_init_and_tags():
    spec = UptimeFlavor().prepare(
        PROPS, InstanceSpec(init="echo boot"), Allocation(size=1), Index("web", 0)
    )
    assert spec.init == "echo boot\nsystemctl start app"
    assert spec.tags == {"role": "web"}
    assert testing.logs[-1] == ("debug", "prepared instance 0 of web")


def test_healthy_by_reported_uptime():
    flavor = UptimeFlavor()
    assert flavor.healthy(PROPS, Description("i-1")) == Health.UNKNOWN
    assert flavor.healthy(PROPS, Description("i-1", tags={"uptime": "10"})) == Health.UNHEALTHY
    assert flavor.healthy(PROPS, Description("i-1", tags={"uptime": "45"})) == Health.HEALTHY
    with pytest.raises(ValueError):
        flavor.healthy(PROPS, Description("i-1", tags={"uptime": "soon"}))


def test_bad_properties_name_the_field():
    with pytest.raises(Invalid, match=r"`MinUptme`: unknown field"):
        UptimeFlavor().validate('{"MinUptme": 3}', Allocation(size=1))
    with pytest.raises(Invalid, match=r"`Tags.role`: expected a string"):
        UptimeFlavor().validate('{"Tags": {"role": 3}}', Allocation(size=1))
    with pytest.raises(Invalid, match=r"`MinUptime`: must not be negative"):
        UptimeFlavor().validate('{"MinUptime": -1}', Allocation(size=1))
