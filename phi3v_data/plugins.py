"""Converter discovery through Python entry points — the built-ins register exactly as a third party would.

A plugin package adds to its ``pyproject.toml``::

    [project.entry-points."phi3v.converters"]
    mysource = "my_package.converter:MySourceConverter"

where ``MySourceConverter`` subclasses :class:`phi3v_data.converter.Converter`.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from phi3v_data.converter import Converter
from schemas.errors import UserError

GROUP = "phi3v.converters"


class PluginError(UserError):
    """A converter is unknown or its plugin failed to load."""


def converter_entry_points() -> dict[str, EntryPoint]:
    """Every registered converter by name (sorted); later registrations of a name do not shadow earlier ones."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def load_converter(name: str) -> type[Converter]:
    """The converter class registered as ``name``."""
    eps = converter_entry_points()
    if name not in eps:
        known = ", ".join(eps) or "none"
        raise PluginError(f"no converter named {name!r} (available: {known})")
    try:
        cls = eps[name].load()
    except Exception as exc:  # a broken third-party plugin must not take the CLI down
        raise PluginError(f"converter {name!r} ({eps[name].value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Converter)):
        raise PluginError(f"converter {name!r} ({eps[name].value}) is not a phi3v_data.converter.Converter subclass")
    return cls
