"""The adapter between a `FlavorPlugin` or `InstancePlugin` and the bindings componentize-py generates from the
WIT (`wit_world`): converts the types both ways and the SDK's exceptions into the `error`
variant. Imported only inside a component build; natively the import fails and
`export_flavor` returns the plugin class itself."""

from __future__ import annotations

from typing import Any, Callable, List, Type

from componentize_py_types import Err, Ok  # type: ignore[import-not-found]

try:
    # A world that also imports wasi:http has two `types` interfaces: componentize-py then
    # names each after its package.
    from wit_world.imports import infrakit_plugin_types as t  # type: ignore[import-not-found]
except ImportError:
    from wit_world.imports import types as t  # type: ignore[import-not-found]

from . import (
    Allocation,
    Attachment,
    Description,
    DestroyContext,
    FlavorPlugin,
    InstancePlugin,
    Health,
    Index,
    InstanceSpec,
    Invalid,
    NotFound,
    PluginError,
    Transient,
)

_HEALTH = {
    Health.HEALTHY: t.Health.HEALTHY,
    Health.UNHEALTHY: t.Health.UNHEALTHY,
    Health.UNKNOWN: t.Health.UNKNOWN,
}


_KINDS = {
    Invalid.kind: t.Error_Invalid,
    NotFound.kind: t.Error_NotFound,
    Transient.kind: t.Error_Transient,
}


def _error(e: PluginError) -> Any:
    # By `kind`, not class: an `http.StatusError` is transient or not-found by its status.
    message = str(e) or type(e).__name__
    return _KINDS.get(getattr(e, "kind", ""), t.Error_Other)(message)


def _call(f: Callable[[], Any]) -> Any:
    # Only the SDK's errors are answers; any other exception propagates and traps: a fault
    # of this call, reported by the host.
    try:
        return f()
    except PluginError as e:
        raise Err(_error(e)) from None


def _allocation(a: Any) -> Allocation:
    if isinstance(a, t.Allocation_Size):
        return Allocation(size=a.value)
    return Allocation(logical_ids=list(a.value))


def _spec_in(s: Any) -> InstanceSpec:
    return InstanceSpec(
        properties=s.properties,
        tags=dict(s.tags),
        init=s.init,
        logical_id=s.logical_id,
        attachments=[Attachment(a.id, a.type) for a in s.attachments],
    )


def _spec_out(s: InstanceSpec) -> Any:
    if not isinstance(s, InstanceSpec):
        raise TypeError(f"prepare must return an InstanceSpec, not {type(s).__name__}")
    return t.InstanceSpec(
        properties=s.properties,
        tags=[(str(k), str(v)) for k, v in s.tags.items()],
        init=s.init,
        logical_id=s.logical_id,
        attachments=[t.Attachment(a.id, a.type) for a in s.attachments],
    )


def _description(d: Any) -> Description:
    return Description(
        id=d.id, logical_id=d.logical_id, tags=dict(d.tags), properties=d.properties
    )


def _health(h: Any) -> Any:
    if not isinstance(h, Health):
        raise TypeError(f"healthy must return a Health, not {type(h).__name__}")
    return _HEALTH[h]


def _description_out(d: Description) -> Any:
    if not isinstance(d, Description):
        raise TypeError(f"describe must return Descriptions, not {type(d).__name__}")
    return t.Description(
        id=d.id,
        logical_id=d.logical_id,
        tags=[(str(k), str(v)) for k, v in d.tags.items()],
        properties=d.properties,
    )


def _metadata(plugin: Any, kind: Any) -> Any:
    return t.PluginMetadata(
        name=plugin.name,
        version=plugin.version,
        kind=kind,
        description=plugin.description,
        capabilities=[],
    )


def instance(plugin: Type[InstancePlugin]) -> type:
    class Instance:
        def metadata(self) -> Any:
            return _metadata(plugin, t.PluginKind.INSTANCE)

        def validate(self, properties: str) -> None:
            _call(lambda: plugin().validate(properties))

        def provision(self, spec: Any) -> str:
            return _call(lambda: str(plugin().provision(_spec_in(spec))))

        def label(self, id: str, labels: Any) -> None:
            _call(lambda: plugin().label(id, dict(labels)))

        def destroy(self, id: str, context: Any) -> None:
            ctx = (
                DestroyContext.ROLLING_UPDATE
                if context == t.DestroyContext.ROLLING_UPDATE
                else DestroyContext.TERMINATE
            )
            _call(lambda: plugin().destroy(id, ctx))

        def describe(self, tags: Any, include_properties: bool) -> List[Any]:
            return _call(
                lambda: [
                    _description_out(d)
                    for d in plugin().describe(dict(tags), include_properties)
                ]
            )

    return Instance


def flavor(plugin: Type[FlavorPlugin]) -> type:
    class Flavor:
        def metadata(self) -> Any:
            return _metadata(plugin, t.PluginKind.FLAVOR)

        def validate(self, properties: str, allocation: Any) -> None:
            _call(lambda: plugin().validate(properties, _allocation(allocation)))

        def prepare(self, properties: str, spec: Any, allocation: Any, index: Any) -> Any:
            return _call(
                lambda: _spec_out(
                    plugin().prepare(
                        properties,
                        _spec_in(spec),
                        _allocation(allocation),
                        Index(index.group, index.sequence),
                    )
                )
            )

        def healthy(self, properties: str, instance: Any) -> Any:
            return _call(lambda: _health(plugin().healthy(properties, _description(instance))))

        def healthy_many(self, properties: str, instances: List[Any]) -> List[Any]:
            answers = plugin().healthy_many(properties, [_description(i) for i in instances])
            return [
                Err(_error(a)) if isinstance(a, PluginError) else Ok(_health(a))
                for a in answers
            ]

        def drain(self, properties: str, instance: Any) -> None:
            _call(lambda: plugin().drain(properties, _description(instance)))

    return Flavor
