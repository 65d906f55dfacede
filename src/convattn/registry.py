"""One ``Registry`` class, and the attention-layer registry built on it.

``register_attn``, ``create_attn``, ``list_attn`` and ``get_attn_info`` work on
:data:`LAYERS`; the model registry (``convattn.models.registry``) is another
:class:`Registry`. Each layer class registers itself under one name with its *kind*:

- ``"gate"``: maps its input to the same shape (``(B, C, H, W)`` for ``ndim=4``,
  ``(B, C, L)`` for ``ndim=3``, ``(B, C, T, H, W)`` for ``ndim=5``);
- ``"conv"``: a convolution replacement that may change width and stride;
- ``"pool"``: a pooling head, ``(B, C, H, W) -> (B, D)``.

``insert_attn`` and the contract tests read the kind, ``ndim`` and ``min_size`` to
know where a layer fits and what input it takes.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from torch import nn

from .exceptions import ConfigError, UnknownOptionError

__all__ = [
    "AttnInfo",
    "KINDS",
    "LAYERS",
    "Registry",
    "check_options",
    "create_attn",
    "get_attn_info",
    "list_attn",
    "register_attn",
]

KINDS = ("gate", "conv", "pool")

E = TypeVar("E")


def check_options(owner: str, fn: Callable[..., Any], options: dict[str, Any], *, fixed: tuple[str, ...] = ()) -> None:
    """Raise :class:`UnknownOptionError` if ``fn`` takes no keyword of that name for some of ``options``.

    ``owner`` names the caller in the message; ``fixed`` are keywords the caller always
    passes itself, left out of the list of accepted options. A ``**kwargs`` catch-all
    accepts everything.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = {k: v for k, v in options.items() if k not in params or params[k].kind is inspect.Parameter.POSITIONAL_ONLY}
    if unknown:
        accepted = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in fixed]
        got = ", ".join(f"{k}={v!r}" for k, v in unknown.items())
        raise UnknownOptionError(
            f"{owner} got unknown option{'s' if len(unknown) > 1 else ''} {got}; "
            f"it accepts {', '.join(accepted) or 'no options'}"
        )


class Registry(Generic[E]):
    """Named entries (records with a ``factory``): register, get, list, create.

    Args:
        what: what an entry is, for messages (``"attention layer"``).
        listing: the Python call that lists the names (``"convattn.list_attn()"``).
        cli: the command that lists them (``"convattn list layers"``).
        fixed: keywords every caller of :meth:`create` passes, left out of the options
            an error message lists.

    Example:
        >>> from types import SimpleNamespace
        >>> reg = Registry("colour", listing="colours()", cli="paint list")
        >>> reg.register("red", SimpleNamespace(name="red", factory=lambda *, shade=1: ("red", shade), warm=True))
        >>> reg.create("red", shade=2), reg.list("r*", warm=True)
        (('red', 2), ['red'])
        >>> reg.get("rde")
        Traceback (most recent call last):
        ...
        convattn.exceptions.ConfigError: unknown colour 'rde'; did you mean 'red'? (colours() or `paint list` lists all 1)
    """

    def __init__(self, what: str, *, listing: str, cli: str, fixed: tuple[str, ...] = ()) -> None:
        self.what, self.listing, self.cli, self.fixed = what, listing, cli, fixed
        self._entries: dict[str, E] = {}
        self._by_factory: dict[Any, E] = {}

    def check_new(self, name: str) -> None:
        """Raise ``ValueError`` unless ``name`` is a non-empty name not registered yet."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a registered {self.what} needs a non-empty name, got {name!r}")
        if name in self._entries:
            old = self._entries[name].factory  # type: ignore[attr-defined]
            raise ValueError(
                f"the {self.what} name {name!r} is already registered to {old.__module__}.{old.__qualname__}"
            )

    def register(self, name: str, entry: E) -> None:
        """Add ``entry`` under ``name``; a name registered twice raises ``ValueError``."""
        self.check_new(name)
        self._entries[name] = entry
        self._by_factory[entry.factory] = entry  # type: ignore[attr-defined]

    def remove(self, name: str) -> E:
        """Take ``name`` out of the registry (tests, doctests); returns its entry."""
        entry = self.get(name)
        del self._entries[name]
        self._by_factory.pop(entry.factory, None)  # type: ignore[attr-defined]
        return entry

    def get(self, name: str) -> E:
        """The entry of ``name``; an unknown name raises ``ConfigError`` with the close matches."""
        if not isinstance(name, str):
            raise TypeError(f"expected the name of a {self.what}, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name.lower(), list(self._entries), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown {self.what} {name!r}{hint} ({self.listing} or `{self.cli}` lists all {len(self)})"
            ) from None

    def find(self, factory: Any) -> E | None:
        """The entry whose ``factory`` (a layer class, a model function) is ``factory``, or ``None``."""
        return self._by_factory.get(factory)

    def list(self, pattern: str = "*", **filters: Any) -> list[str]:
        """Names matching the shell-style ``pattern`` whose entries have each attribute in ``filters``
        (a filter of ``None`` matches all), sorted."""
        wanted = {k: v for k, v in filters.items() if v is not None}
        return sorted(
            n for n, e in self._entries.items()
            if fnmatch.fnmatchcase(n, pattern) and all(getattr(e, k) == v for k, v in wanted.items())
        )

    def create(self, name: str, /, *args: Any, **options: Any) -> Any:
        """Call the factory of ``name`` with ``args`` and ``options``; an option it does not take raises
        :class:`UnknownOptionError` before anything is built."""
        factory = self.get(name).factory  # type: ignore[attr-defined]
        check_options(f"{self.what} {name!r}", factory, options, fixed=self.fixed)
        return factory(*args, **options)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class AttnInfo:
    """A layer registry entry.

    Attributes:
        name: registry name (``"cbam"``).
        cls: the ``nn.Module`` class.
        kind: ``"gate"``, ``"conv"`` or ``"pool"`` (see the module docstring).
        paper: citation of the paper the layer implements.
        ndim: number of input dimensions, batch included (4 for images).
        min_size: smallest spatial extent the layer accepts.
        default_kwargs: keyword-only constructor arguments and their defaults.
    """

    name: str
    cls: type
    kind: str
    paper: str
    ndim: int = 4
    min_size: int = 1
    default_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def factory(self) -> type:
        """What :meth:`Registry.create` calls: the class."""
        return self.cls


LAYERS: Registry[AttnInfo] = Registry("attention layer", listing="convattn.list_attn()", cli="convattn list layers")
"""The attention-layer registry."""


def _keyword_defaults(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def register_attn(
    name: str, *, kind: str = "gate", paper: str, ndim: int = 4, min_size: int = 1
) -> Callable[[type], type]:
    """Class decorator that adds an attention layer to the registry.

    Args:
        name: registry name; registering a name twice raises ``ValueError``.
        kind: ``"gate"``, ``"conv"`` or ``"pool"``.
        paper: the paper the layer implements (title, venue, link).
        ndim: input dimensions, batch included.
        min_size: smallest spatial extent the layer accepts.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> @register_attn("doc_identity", kind="gate", paper="none")
        ... class Identity(nn.Module):
        ...     def __init__(self, channels: int):
        ...         super().__init__()
        ...     def forward(self, x):
        ...         return x
        >>> create_attn("doc_identity", 8)(torch.ones(1, 8, 2, 2)).shape
        torch.Size([1, 8, 2, 2])
        >>> _ = LAYERS.remove("doc_identity")
    """
    if kind not in KINDS:
        raise ConfigError(f"register_attn({name!r}) expects kind in {KINDS}, got {kind!r}")
    LAYERS.check_new(name)

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_attn({name!r}) expects an nn.Module subclass, got {cls!r}")
        info = AttnInfo(name, cls, kind, paper, ndim=ndim, min_size=min_size, default_kwargs=_keyword_defaults(cls))
        LAYERS.register(name, info)
        cls.attn_name = name
        return cls

    return decorator


def get_attn_info(name: str | type) -> AttnInfo:
    """Return the registry entry of a layer, by name or by class.

    Raises:
        ConfigError: unknown name (a ``ValueError``); the message lists the close matches.
    """
    if isinstance(name, type):
        info = LAYERS.find(name)
        if info is None:
            raise ConfigError(
                f"{name.__qualname__} is not a registered attention layer "
                f"({LAYERS.listing} or `{LAYERS.cli}` lists all {len(LAYERS)})"
            )
        return info
    return LAYERS.get(name)


def create_attn(name_or_class: str | type, channels: int, **kwargs: Any) -> nn.Module:
    """Build an attention layer by registry name or class.

    Args:
        name_or_class: a registry name (``"se"``) or an ``nn.Module`` class whose
            constructor takes ``channels`` first.
        channels: number of input channels.
        **kwargs: keyword-only options of the layer.

    Raises:
        ConfigError: unknown name (a ``ValueError``, listing close matches).
        UnknownOptionError: an option the layer does not take (a ``TypeError``).

    Example:
        >>> import torch, convattn
        >>> layer = convattn.create_attn("se", 64, rd_ratio=1 / 8)
        >>> layer(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """
    if isinstance(name_or_class, str):
        return LAYERS.create(name_or_class, channels, **kwargs)
    if not (isinstance(name_or_class, type) and issubclass(name_or_class, nn.Module)):
        raise TypeError(
            f"create_attn expects a layer name or nn.Module class, got {type(name_or_class).__name__}"
        )
    check_options(name_or_class.__name__, name_or_class, kwargs)
    return name_or_class(channels, **kwargs)


def list_attn(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered layer names matching a shell-style wildcard, sorted.

    Example:
        >>> import convattn
        >>> convattn.list_attn("cbam*")
        ['cbam', 'cbam_channel', 'cbam_spatial']
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"list_attn expects kind in {KINDS} or None, got {kind!r}")
    return LAYERS.list(pattern, kind=kind)
