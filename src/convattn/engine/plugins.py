"""Models and layers of your own: the modules that register them, imported by name (``convattn --import``,
``CONVATTN_IMPORT``), found through the ``convattn.models`` entry points, and recorded in a run so that
loading it imports them again.

A module registers its networks with ``@convattn.register_model("mynet")`` (and its layers with
``@convattn.register_attn``) when it is imported; a run of ``mynet`` records that module in its
checkpoint's ``data_info["modules"]`` (:func:`use_modules`, called by ``build_model``), so ``eval``,
``viz``, ``predict``, ``export`` and ``report`` rebuild it without flags.
"""

from __future__ import annotations

import importlib
import os
import warnings
from importlib.metadata import entry_points
from typing import Any, Iterable

from ..exceptions import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "IMPORT_ENV", "import_modules", "env_modules", "load_entry_points", "find_model",
           "use_modules"]

#: The entry-point group a package lists its model modules under (``mynet = "mypkg.models"``).
ENTRY_POINT_GROUP = "convattn.models"
#: The environment variable naming modules to import, comma-separated (as ``--import``).
IMPORT_ENV = "CONVATTN_IMPORT"

_HOW = "install its package, or put the folder that holds it on PYTHONPATH (or run from that folder)"
_loaded: set[str] = set()  # the entry points loaded


def import_modules(names: Iterable[str], *, source: str) -> list[str]:
    """Import each module of ``names`` (registering its models and layers); ``source`` says who named them.

    Raises:
        ConfigError: a module that cannot be imported, named with the reason and how to make it importable.
    """
    done = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{source} names module {name!r}, which cannot be imported ({exc}); {_HOW}") from None
        done.append(name)
    return done


def env_modules() -> list[str]:
    """The modules ``CONVATTN_IMPORT`` names (comma-separated)."""
    return [m.strip() for m in os.environ.get(IMPORT_ENV, "").split(",") if m.strip()]


def load_entry_points() -> list[str]:
    """Load each ``convattn.models`` entry point not loaded yet (each imports its module); their names."""
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    for ep in found:
        if ep.value in _loaded:
            continue
        try:
            ep.load()
        except ImportError as exc:
            raise ConfigError(f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}) cannot be "
                              f"loaded ({exc}); reinstall the package that declares it") from None
        _loaded.add(ep.value)
    return [ep.name for ep in found]


def find_model(name: str) -> Any:
    """The registry entry of model ``name``; an unknown one first imports ``CONVATTN_IMPORT``'s modules and
    the ``convattn.models`` entry points.

    Raises:
        ConfigError: still unknown; the message says how to make a model of your own known.
    """
    from ..models.registry import MODELS

    if name not in MODELS:
        import_modules(env_modules(), source=IMPORT_ENV)
        load_entry_points()
    try:
        return MODELS.get(name)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; a model of your own is known once its module is imported: `convattn --import "
                          f"MODULE ...`, {IMPORT_ENV}=MODULE, or an entry point in group {ENTRY_POINT_GROUP!r}") from None


def _user_module(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None) or ""
    return None if module.split(".")[0] in ("convattn", "") else module


def use_modules(config: Any, data_info: dict[str, Any]) -> None:
    """Make ``config``'s model and attention known and record the user modules they come from.

    Imports the modules ``data_info["modules"]`` records (a saved run), finds the model
    (:func:`find_model`), and sets ``data_info["modules"]`` to the modules outside convattn that
    define the model and the attention layer (left out when there are none). A model defined in
    ``__main__`` is not recorded: a warning says that loading the run needs it registered again.

    Raises:
        ConfigError: a recorded module cannot be imported, or the model is unknown.
    """
    from ..registry import LAYERS

    import_modules(data_info.get("modules", ()), source=f"the run of model {config.model!r}")
    objs = [find_model(config.model).factory]
    if isinstance(config.attention, str) and config.attention.lower() != "none" and config.attention in LAYERS:
        objs.append(LAYERS.get(config.attention).cls)
    modules = list(dict.fromkeys(m for m in map(_user_module, objs) if m is not None))
    if "__main__" in modules:
        modules.remove("__main__")
        warnings.warn(f"model {config.model!r} or attention {config.attention!r} is defined in the script being run "
                      "(__main__); loading this run needs it registered again: define it in an importable module "
                      "to have the run record it", stacklevel=3)
    if modules:
        data_info["modules"] = modules
    else:
        data_info.pop("modules", None)
