"""py-flavor: an infrakit flavor plugin in Python, on the `infrakit_plugin` SDK.

It adds the `Init` lines and `Tags` of its properties to each instance, and judges an
instance healthy once it reports (tag `uptime`, in seconds) at least `MinUptime`.
"""

from dataclasses import dataclass, field
from typing import Dict, List

from infrakit_plugin import FlavorPlugin, Health, Invalid, export_flavor, log, parse


@dataclass
class Props:
    Init: List[str] = field(default_factory=list)
    Tags: Dict[str, str] = field(default_factory=dict)
    MinUptime: int = 0


class UptimeFlavor(FlavorPlugin):
    name = "py-flavor"
    description = "Adds init lines and tags; healthy once an instance reports enough uptime"

    def validate(self, properties, allocation):
        props = parse(properties, Props)
        if props.MinUptime < 0:
            raise Invalid("properties at `MinUptime`: must not be negative")
        for key in props.Tags:
            if key.startswith("infrakit."):
                raise Invalid(f"properties at `Tags.{key}`: the infrakit. prefix belongs to the host")

    def prepare(self, properties, spec, allocation, index):
        props = parse(properties, Props)
        spec.init = "\n".join([spec.init, *props.Init] if spec.init else props.Init)
        spec.tags.update(props.Tags)
        log.debug(f"prepared instance {index.sequence} of {index.group}")
        return spec

    def healthy(self, properties, instance):
        props = parse(properties, Props)
        reported = instance.tags.get("uptime")
        if reported is None:
            return Health.UNKNOWN
        # A value that is not a number is a bug of whatever set it: int() raises, and the
        # call fails as a fault rather than a verdict.
        return Health.HEALTHY if int(reported) >= props.MinUptime else Health.UNHEALTHY

    def drain(self, properties, instance):
        log.info(f"draining {instance.id}")


Flavor = export_flavor(UptimeFlavor)
