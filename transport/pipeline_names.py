"""Pipeline names and where they point, without importing pipecat or any pipeline (the CLI uses this).

A pipeline is chosen by *name* only. A name is looked up, in this order, in

1. the built-ins (``echo``, ``listen``), which nothing can redefine;
2. the names the daemon's own settings register (``[pipelines] mybot = "mypkg.bot:factory"``);
3. the entry points of installed packages in the group ``room_supervisor.pipelines``
   (``[project.entry-points."room_supervisor.pipelines"] mybot = "mypkg.bot:factory"``).

Settings win over entry points for the same name. Anything else, in particular a ``module:function`` read
from Redis, is refused before anything is imported: whoever can write to Redis must not choose code the daemon
runs. Entry points are read once per process (:func:`reload_entry_points` reads them again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Mapping

BUILTIN_NAMES: tuple[str, ...] = ("echo", "listen")
ENTRY_POINT_GROUP = "room_supervisor.pipelines"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")

HOW_TO_REGISTER = (
    "register it by name in the [pipelines] table of the config file the daemons read "
    '(mybot = "mypkg.bot:factory"), or as an entry point of an installed package in the group '
    f'{ENTRY_POINT_GROUP} (mybot = "mypkg.bot:factory"), then use --pipeline mybot'
)


class PipelineNotFound(LookupError):
    """The pipeline name is not registered, or what it is registered as cannot be loaded."""


class InvalidPipelineName(PipelineNotFound):
    """Not a pipeline name at all (a ``module:function``, or characters a name cannot have)."""


def is_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    """``name`` if it is a pipeline name (``[A-Za-z0-9_.-]``, 1 to 100 characters); else
    :class:`InvalidPipelineName` saying how to register a pipeline."""
    if is_name(name):
        return name
    if isinstance(name, str) and ":" in name:
        raise InvalidPipelineName(f"pipeline {name!r} is not a registered name: a pipeline is chosen by name "
                                  f"only; {HOW_TO_REGISTER}")
    raise InvalidPipelineName(f"unknown pipeline {name!r}: a pipeline name has only letters, digits, '_', "
                              f"'.' and '-'; {HOW_TO_REGISTER}")


def check_target(target: str) -> tuple[str, str]:
    """``(module, function)`` of a ``module:function`` target; ValueError if it is not one."""
    module, sep, func = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not sep or not module or not func.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"{target!r} is not module:function (for example \"mypkg.bot:factory\")")
    return module, func


@dataclass(frozen=True)
class EntryPointTarget:
    name: str
    target: str
    distribution: str


_entry_points: dict[str, list[EntryPointTarget]] | None = None


def reload_entry_points() -> None:
    """Forget the entry points read so far; the next lookup reads the installed packages again."""
    global _entry_points
    _entry_points = None


def entry_point_targets() -> dict[str, list[EntryPointTarget]]:
    """name -> every entry point of that name in :data:`ENTRY_POINT_GROUP` (metadata only: nothing is
    imported). Read once per process; built-in names and names that are not pipeline names are left out."""
    global _entry_points
    if _entry_points is None:
        found: dict[str, list[EntryPointTarget]] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN_NAMES or not is_name(ep.name):
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            targets = found.setdefault(ep.name, [])
            if all(t.target != ep.value for t in targets):
                targets.append(EntryPointTarget(ep.name, ep.value, dist))
        _entry_points = found
    return _entry_points


def known_names(registered: Mapping[str, str]) -> list[str]:
    """Every name :func:`resolve_target` knows, sorted."""
    return sorted({*BUILTIN_NAMES, *registered, *entry_point_targets()})


def resolve_target(name: str, registered: Mapping[str, str]) -> str | None:
    """The ``module:function`` that ``name`` is registered as (None for a built-in); imports nothing.

    Raises :class:`PipelineNotFound` for a name that is not registered (the message lists the known names and
    says how to register one), for a target that is not ``module:function``, and for a name two installed
    packages register as different targets."""
    check_name(name)
    if name in BUILTIN_NAMES:
        return None
    if name in registered:
        target, where = registered[name], f"[pipelines] {name}"
    else:
        candidates = entry_point_targets().get(name, [])
        if not candidates:
            raise PipelineNotFound(
                f"unknown pipeline {name!r}: known pipelines are {', '.join(known_names(registered))}; "
                f"{HOW_TO_REGISTER}")
        if len(candidates) > 1:
            found = "; ".join(f"{c.target} (from {c.distribution})" for c in candidates)
            raise PipelineNotFound(f"pipeline {name!r} is registered as different entry points in "
                                   f"{ENTRY_POINT_GROUP}: {found}; name one in [pipelines] to choose")
        target, where = candidates[0].target, f"entry point {name} of {candidates[0].distribution}"
    try:
        check_target(target)
    except ValueError as exc:
        raise PipelineNotFound(f"pipeline {name!r} ({where}): {exc}") from None
    return target
