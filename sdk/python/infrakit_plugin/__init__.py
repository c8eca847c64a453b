"""Write infrakit flavor and instance plugins in Python.

A plugin is a class deriving from `FlavorPlugin`; one line exports it as the component's
`Flavor` (what componentize-py looks for in the app module)::

    from dataclasses import dataclass, field
    from infrakit_plugin import FlavorPlugin, Health, Invalid, export_flavor, parse

    @dataclass
    class Props:
        Role: str = "web"

    class RoleFlavor(FlavorPlugin):
        name = "role-flavor"

        def validate(self, properties, allocation):
            parse(properties, Props)

        def healthy(self, properties, instance):
            role = parse(properties, Props).Role
            return Health.HEALTHY if instance.tags.get("role") == role else Health.UNHEALTHY

    Flavor = export_flavor(RoleFlavor)

Build with ``componentize-py -d WIT_DIR -w flavor-plugin-http componentize app -o role-flavor.wasm``
and install with ``infrakit plugin install role-flavor.wasm``. The plugin's logic is plain
Python: test it with pytest, natively, without wasm (`config`, `log` and the types work
outside a component; `testing.config` sets configuration values). An instance plugin derives
from `InstancePlugin` and is exported with ``Instance = export_instance(MyPlugin)``, built with
``-w instance-plugin-http``.

HTTP: `infrakit_plugin.http` sends requests through the host, to the targets the grant file
allows (the ``-http`` worlds above are what give the component `wasi:http`); natively they go
to ``testing.http``.

Errors: raise `Invalid` (bad input: the group pauses until its spec changes), `NotFound`,
`Transient` (retried with back-off) or `PluginError`. Any other exception is a fault of that
call only: the host reports it and the next call starts in a fresh instance.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any, Dict, List, Optional, Type, TypeVar

__all__ = [
    "Allocation",
    "Attachment",
    "Description",
    "DestroyContext",
    "FlavorPlugin",
    "InstancePlugin",
    "Health",
    "Index",
    "InstanceSpec",
    "Invalid",
    "NotFound",
    "PluginError",
    "Transient",
    "config",
    "export_flavor",
    "export_instance",
    "http",
    "log",
    "parse",
    "testing",
]

T = TypeVar("T")


# --- Errors: the error variants of every call, as exceptions ---------------------------------


class PluginError(Exception):
    """Anything else that went wrong (the `other` error); the host reports it."""

    kind = "other"


class Invalid(PluginError):
    """The input (properties, spec, id) is wrong; retrying will not help."""

    kind = "invalid"


class NotFound(PluginError):
    """The thing asked for does not exist."""

    kind = "not-found"


class Transient(PluginError):
    """A temporary failure (rate limit, timeout): the host retries with back-off."""

    kind = "transient"


# --- Types, as plain Python: usable in tests without a component ----------------------------


class Health(enum.Enum):
    """Application-aware health as judged by a flavor."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class DestroyContext(enum.Enum):
    """Why an instance is destroyed."""

    TERMINATE = "terminate"
    ROLLING_UPDATE = "rolling-update"


@dataclasses.dataclass
class Attachment:
    """Something attached to an instance when it is provisioned."""

    id: str
    type: str


@dataclasses.dataclass
class InstanceSpec:
    """What to provision (InfraKit's instance spec). `properties` is the instance plugin's
    JSON text; tags are a dict (a later value of a key wins)."""

    properties: str = ""
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)
    init: str = ""
    logical_id: Optional[str] = None
    attachments: List[Attachment] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Description:
    """What an instance plugin observes about one instance."""

    id: str
    logical_id: Optional[str] = None
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)
    properties: Optional[str] = None


@dataclasses.dataclass
class Allocation:
    """How a group is allocated: `size` cattle, or the named pets `logical_ids`."""

    size: Optional[int] = None
    logical_ids: Optional[List[str]] = None

    def __len__(self) -> int:
        return self.size if self.size is not None else len(self.logical_ids or [])


@dataclasses.dataclass
class Index:
    """Where an instance sits in its group."""

    group: str
    sequence: int


# --- Typed properties with field-path errors --------------------------------------------------


def parse(properties: str, cls: Type[T]) -> T:
    """Reads JSON `properties` into the dataclass `cls`.

    Field names are the JSON keys. Empty text or ``null`` is ``{}`` (all defaults). A missing
    field without a default, an unknown key, or a value of the wrong type raises `Invalid`
    naming its path (``properties at `Tags.role`: expected a string, got 3``).
    """
    text = (properties or "").strip()
    if text in ("", "null"):
        text = "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise Invalid(f"properties: not JSON: {e}") from None
    return _convert(value, cls, "")


def _where(path: str) -> str:
    return f"properties at `{path}`" if path else "properties"


def _describe(value: Any) -> str:
    return json.dumps(value)[:60]


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path)
        for a in inner:
            try:
                return _convert(value, a, path)
            except Invalid:
                continue
        raise Invalid(f"{_where(path)}: {_describe(value)} matches none of the accepted forms")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise Invalid(f"{_where(path)}: expected an object, got {_describe(value)}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = [k for k in value if k not in fields]
        if unknown:
            key = unknown[0]
            at = f"{path}.{key}" if path else key
            raise Invalid(
                f"{_where(at)}: unknown field, expected one of {', '.join(fields)}"
            )
        kwargs = {}
        for name, f in fields.items():
            at = f"{path}.{name}" if path else name
            if name in value:
                kwargs[name] = _convert(value[name], hints[name], at)
            elif (
                f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            ):
                raise Invalid(f"{_where(at)}: missing")
        return tp(**kwargs)
    if origin in (list, List):
        if not isinstance(value, list):
            raise Invalid(f"{_where(path)}: expected a list, got {_describe(value)}")
        (item,) = args or (Any,)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise Invalid(f"{_where(path)}: expected an object, got {_describe(value)}")
        _, item = args or (str, Any)
        return {k: _convert(v, item, f"{path}.{k}" if path else k) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(f"{_where(path)}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{_where(path)}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{_where(path)}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise Invalid(f"{_where(path)}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"infrakit_plugin.parse: unsupported field type {tp!r} at {path or '.'}")


# --- Host services: logging and configuration -------------------------------------------------


class _Testing:
    """Stands in for the host outside a component: configuration values, captured logs, and
    `http`, a function from `http.Request` to `http.Response` (or raising an `http.HttpError`)
    that answers the plugin's requests."""

    def __init__(self) -> None:
        self.config: Dict[str, str] = {}
        self.logs: List[tuple] = []
        self.http: Optional[Any] = None

    def reset(self) -> None:
        self.config.clear()
        self.logs.clear()
        self.http = None


testing = _Testing()


def _host():
    try:
        from wit_world.imports import host  # type: ignore[import-not-found]

        return host
    except ImportError:
        return None


def config(key: str) -> Optional[str]:
    """A configuration value the operator granted (`[config]` of the grant file), or None."""
    host = _host()
    if host is None:
        return testing.config.get(key)
    return host.get_config(key)


class _Log:
    """`log.info("...")` and friends: lines reach the host's log tagged with the plugin's name."""

    def _emit(self, level: str, message: str) -> None:
        host = _host()
        if host is None:
            testing.logs.append((level, message))
            return
        host.log(getattr(host.Level, level.upper()), message)

    def trace(self, message: str) -> None:
        self._emit("trace", message)

    def debug(self, message: str) -> None:
        self._emit("debug", message)

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warn(self, message: str) -> None:
        self._emit("warn", message)

    def error(self, message: str) -> None:
        self._emit("error", message)


log = _Log()


# --- The flavor plugin: a base class with defaults -------------------------------------------


class FlavorPlugin:
    """Derive from this, set `name` (and `version`, `description`), implement `validate` and
    `healthy`. `prepare` returns the spec unchanged, `healthy_many` asks `healthy` about each
    instance and `drain` does nothing, unless overridden. A fresh object is made per call."""

    name: str = ""
    version: str = "0.1.0"
    description: str = ""

    def validate(self, properties: str, allocation: Allocation) -> None:
        raise NotImplementedError("validate")

    def prepare(
        self, properties: str, spec: InstanceSpec, allocation: Allocation, index: Index
    ) -> InstanceSpec:
        return spec

    def healthy(self, properties: str, instance: Description) -> Health:
        raise NotImplementedError("healthy")

    def healthy_many(self, properties: str, instances: List[Description]) -> List[Any]:
        """Health per instance, in order: a `Health`, or the `PluginError` it raised."""
        out: List[Any] = []
        for i in instances:
            try:
                out.append(self.healthy(properties, i))
            except PluginError as e:
                out.append(e)
        return out

    def drain(self, properties: str, instance: Description) -> None:
        return None


class InstancePlugin:
    """Derive from this, set `name` (and `version`, `description`), implement the five calls.
    A fresh object is made per call: keep state in files (the scratch directory is `/data`)
    or behind an API, never in the object."""

    name: str = ""
    version: str = "0.1.0"
    description: str = ""

    def validate(self, properties: str) -> None:
        raise NotImplementedError("validate")

    def provision(self, spec: InstanceSpec) -> str:
        """Creates an instance keeping `spec.tags` with it; returns its id."""
        raise NotImplementedError("provision")

    def label(self, id: str, labels: Dict[str, str]) -> None:
        """Merges `labels` into the instance's tags; `NotFound` when there is none."""
        raise NotImplementedError("label")

    def destroy(self, id: str, context: DestroyContext) -> None:
        """Destroys the instance; `NotFound` when there is none."""
        raise NotImplementedError("destroy")

    def describe(self, tags: Dict[str, str], include_properties: bool) -> List[Description]:
        """The instances carrying every tag of `tags`."""
        raise NotImplementedError("describe")


def export_instance(plugin: Type[InstancePlugin]) -> Any:
    """The component's `Instance` export for `plugin`: assign it to `Instance` in the app
    module. Outside a component build (in tests) `plugin` itself is returned."""
    return _export(plugin, "instance")


def export_flavor(plugin: Type[FlavorPlugin]) -> Any:
    """The component's `Flavor` export for `plugin`: assign it to `Flavor` in the app module.
    Outside a component build (in tests) the bindings do not exist and `plugin` itself is
    returned."""
    return _export(plugin, "flavor")


def _export(plugin: Any, adapter: str) -> Any:
    if not plugin.name:
        raise ValueError(f"{plugin.__name__}.name must be set: it is the plugin's name")
    try:
        from . import _component
    except ImportError:
        return plugin
    return getattr(_component, adapter)(plugin)


from . import http  # noqa: E402  (it needs PluginError, defined above)
