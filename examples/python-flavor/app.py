"""py-flavor: an infrakit flavor plugin in Python, on the `infrakit_plugin` SDK.

It adds the `Init` lines and `Tags` of its properties to each instance, judges an
instance healthy once it reports (tag `uptime`, in seconds) at least `MinUptime`, and, when
`Notify` names a URL, tells it about each instance it drains (an HTTP POST through the host,
which must grant that URL: `[http] allow` in the plugin's grant file).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from infrakit_plugin import FlavorPlugin, Health, Invalid, export_flavor, http, log, parse


@dataclass
class Props:
    Init: List[str] = field(default_factory=list)
    Tags: Dict[str, str] = field(default_factory=dict)
    MinUptime: int = 0
    Notify: Optional[str] = None


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
        if props.Notify and not props.Notify.startswith(("http://", "https://")):
            raise Invalid("properties at `Notify`: must be an http:// or https:// URL")

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
        notify = parse(properties, Props).Notify
        if notify:
            # An error (refused, unreachable, a 5xx) is the call's answer: the host retries
            # a transient one.
            http.post(
                notify, json={"event": "drain", "instance": instance.id}, timeout=5
            ).raise_for_status()


Flavor = export_flavor(UptimeFlavor)
