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
