"""The SDK outside a component: typed properties, defaults, host stand-ins."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

import infrakit_plugin as ik


@dataclass
class Inner:
    Port: int


@dataclass
class Props:
    Name: str
    Tags: Dict[str, str] = field(default_factory=dict)
    Ports: List[Inner] = field(default_factory=list)
    Ratio: float = 1.0
    Debug: bool = False
    Note: Optional[str] = None


def test_parse_fills_defaults_and_nested_types():
    p = ik.parse('{"Name": "a", "Ports": [{"Port": 80}], "Ratio": 2}', Props)
    assert p == Props(Name="a", Ports=[Inner(80)], Ratio=2.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"Nme": "a"}', "properties at `Nme`: unknown field, expected one of Name, Tags"),
        ("{}", "properties at `Name`: missing"),
        ('{"Name": 3}', "properties at `Name`: expected a string, got 3"),
        ('{"Name": "a", "Tags": {"k": 1}}', "properties at `Tags.k`: expected a string"),
        ('{"Name": "a", "Ports": [{"Port": "80"}]}', "properties at `Ports[0].Port`: expected an integer"),
        ('{"Name": "a", "Debug": "yes"}', "properties at `Debug`: expected true or false"),
        ('{"Name": "a", "Ports": {}}', "properties at `Ports`: expected a list"),
        ("[1]", "properties: expected an object"),
        ("{not json", "properties: not JSON"),
    ],
)
def test_parse_errors_name_the_field(text, message):
    with pytest.raises(ik.Invalid) as e:
        ik.parse(text, Props)
    assert message in str(e.value)


def test_empty_properties_are_all_defaults():
    @dataclass
    class AllDefault:
        Size: int = 3

    assert ik.parse("", AllDefault) == AllDefault()
    assert ik.parse("null", AllDefault) == AllDefault()


class Judge(ik.FlavorPlugin):
    name = "judge"

    def validate(self, properties, allocation):
        pass

    def healthy(self, properties, instance):
        if instance.id == "bad":
            raise ik.Transient("probe timed out")
        return ik.Health.HEALTHY


def test_flavor_defaults():
    spec = ik.InstanceSpec(init="x")
    assert Judge().prepare("{}", spec, ik.Allocation(size=1), ik.Index("g", 0)) is spec
    answers = Judge().healthy_many("{}", [ik.Description("ok"), ik.Description("bad")])
    assert answers[0] == ik.Health.HEALTHY
    assert isinstance(answers[1], ik.Transient)
    assert Judge().drain("{}", ik.Description("ok")) is None
    assert len(ik.Allocation(logical_ids=["a", "b"])) == 2


def test_export_outside_a_component_is_the_class_and_needs_a_name():
    assert ik.export_flavor(Judge) is Judge

    class Nameless(Judge):
        name = ""

    with pytest.raises(ValueError, match="name must be set"):
        ik.export_flavor(Nameless)


def test_config_and_logs_come_from_testing_outside_a_component():
    ik.testing.reset()
    assert ik.config("region") is None
    ik.testing.config["region"] = "eu-west-1"
    assert ik.config("region") == "eu-west-1"
    ik.log.warn("careful")
    assert ik.testing.logs == [("warn", "careful")]
    ik.testing.reset()


# --- HTTP, natively: requests go to testing.http ----------------------------------------------


def test_http_without_a_handler_is_unsupported_and_names_the_way_out():
    ik.testing.reset()
    with pytest.raises(ik.http.Unsupported, match="set infrakit_plugin.testing.http"):
        ik.http.get("http://api.test/x")


def test_http_requests_reach_the_handler_with_json_bodies_and_headers():
    seen = []

    def handler(req):
        seen.append(req)
        return ik.http.Response(201, [("Content-Type", "application/json")], b'{"id": "s-1"}')

    ik.testing.http = handler
    try:
        r = ik.http.post(
            "https://api.test/servers?dry=1",
            json={"size": "small"},
            headers={"Authorization": "Bearer t"},
            timeout=3,
        )
        assert r.raise_for_status() is r
        assert r.json() == {"id": "s-1"}
        assert r.header("content-type") == "application/json"
        (req,) = seen
        assert (req.method, req.url, req.timeout) == ("POST", "https://api.test/servers?dry=1", 3)
        assert req.body == b'{"size": "small"}'
        assert req.header("authorization") == "Bearer t"
        assert req.header("content-type") == "application/json"
        ik.http.put("http://api.test/x", body="text")
        assert seen[-1].body == b"text"
    finally:
        ik.testing.reset()


@pytest.mark.parametrize(
    "status, kind",
    [(500, "transient"), (503, "transient"), (429, "transient"), (404, "not-found"), (400, "other")],
)
def test_http_status_errors_carry_the_kind_the_host_acts_on(status, kind):
    r = ik.http.Response(status, [], b"no such server" * 40, "http://api.test/s/1")
    with pytest.raises(ik.http.StatusError) as e:
        r.raise_for_status()
    assert e.value.kind == kind and e.value.status == status
    assert isinstance(e.value, ik.PluginError)
    assert f"HTTP {status} from http://api.test/s/1: no such server" in str(e.value)
    assert len(str(e.value)) < 300


def test_http_refuses_bad_urls_and_bodies_that_are_not_json():
    ik.testing.http = lambda req: ik.http.Response(200, [], b"<html>")
    try:
        for url, why in [("api.test/x", "no scheme"), ("ftp://x/", "not http"), ("http:///p", "no host")]:
            with pytest.raises(ik.http.InvalidUrl, match=why):
                ik.http.get(url)
        with pytest.raises(ik.http.HttpError, match="body is not JSON"):
            ik.http.get("http://api.test/").json()
        with pytest.raises(ValueError, match="body or json"):
            ik.http.post("http://api.test/", body=b"x", json={})
    finally:
        ik.testing.reset()


def test_http_url_split():
    assert ik.http._split("https://h:8443/v1/x?y=1") == (True, "h:8443", "/v1/x?y=1")
    assert ik.http._split("http://h") == (False, "h", "/")
    assert ik.http._split("http://h?q") == (False, "h", "/?q")
