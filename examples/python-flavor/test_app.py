"""The plugin's logic, natively with pytest: no wasm, no host."""

import json

import pytest

from infrakit_plugin import Allocation, Description, Health, Index, InstanceSpec, Invalid, http, testing

from app import UptimeFlavor

@pytest.fixture(autouse=True)
def host():
    """Each test starts with no config, logs or HTTP handler."""
    testing.reset()
    yield testing
    testing.reset()


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
    with pytest.raises(Invalid, match=r"`Notify`: must be an http"):
        UptimeFlavor().validate('{"Notify": "ftp://x"}', Allocation(size=1))


def test_drain_notifies_and_its_errors_are_answers():
    seen = []

    def server(req):
        seen.append(req)
        return http.Response(503 if "down" in req.url else 204)

    testing.http = server
    UptimeFlavor().drain('{"Notify": "http://hooks.test/drained"}', Description("i-7"))
    assert [(r.method, r.url) for r in seen] == [("POST", "http://hooks.test/drained")]
    assert json.loads(seen[0].body) == {"event": "drain", "instance": "i-7"}
    assert seen[0].header("Content-Type") == "application/json"

    # A 503 is transient: the host retries the drain.
    with pytest.raises(http.StatusError) as e:
        UptimeFlavor().drain('{"Notify": "http://hooks.test/down"}', Description("i-7"))
    assert e.value.kind == "transient"

    # Without Notify, no request.
    UptimeFlavor().drain("{}", Description("i-8"))
    assert len(seen) == 2
