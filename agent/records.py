"""``record``: ``dataclasses.dataclass`` for the modules every deployment imports, at a fraction of
the start-up cost.

``import dataclasses`` takes ~10 ms (it imports inspect, ast, dis, tokenize) and every ``@dataclass``
compiles its methods from source when the class is defined (~1 ms each): a third of ``cdsim local``'s
whole run for a small bundle. ``@record`` makes the same class, with the same generated methods
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, frozen ``__setattr__``/``__delattr__``,
``__match_args__``), each compiled the first time it is called; ``__dataclass_fields__`` (real
``dataclasses.Field`` objects, so ``dataclasses.fields``, ``asdict``, ``replace`` and ``is_dataclass``
work as on a dataclass) is built the first time it is asked for. Supported: ``frozen`` and ``eq``, and
``field(default=, default_factory=, repr=, compare=)``; a class without record bases. Assigning to a
frozen record raises ``FrozenInstanceError`` (an ``AttributeError``; dataclasses' own where it is
imported already).

Pure: imports nothing at start-up (dataclasses only when a caller asks for the fields).
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:
    def dataclass_transform(**_kwargs: object) -> Callable[[_T], _T]:
        return lambda f: f

__all__ = ["FrozenInstanceError", "field", "record", "replace"]


def _frozen_error() -> type[AttributeError]:
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None:
        return dataclasses.FrozenInstanceError  # type: ignore[no-any-return]  # the stub types it as a class of Any's module
    return FrozenInstanceError


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (dataclasses.FrozenInstanceError once dataclasses is
    imported, so ``except dataclasses.FrozenInstanceError`` keeps working)."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Field:
    __slots__ = ("compare", "default", "default_factory", "name", "repr", "type")

    def __init__(self, default: object, default_factory: object, repr_: bool, compare: bool) -> None:
        self.default, self.default_factory, self.repr, self.compare = default, default_factory, repr_, compare
        self.name = ""
        self.type: object = None


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING, repr: bool = True,  # noqa: A002 - dataclasses' name
          compare: bool = True) -> Any:
    """As ``dataclasses.field``, for a ``@record`` class."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr, compare)


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[_T] | None = None, /, *, frozen: bool = False, eq: bool = True) -> Any:
    """As ``@dataclass`` / ``@dataclass(frozen=..., eq=...)``."""
    def wrap(c: type[_T]) -> type[_T]:
        return _process(c, frozen, eq)
    return wrap if cls is None else wrap(cls)


def replace(obj: _T, /, **changes: object) -> _T:
    """As ``dataclasses.replace`` for a record: a new one, with ``changes``."""
    fields: dict[str, _Field] = type(obj).__record_fields__  # type: ignore[attr-defined]  # set by _process, not declared on the class
    for name in fields:
        if name not in changes:
            changes[name] = getattr(obj, name)
    return type(obj)(**changes)


def _process(cls: type[_T], frozen: bool, eq: bool) -> type[_T]:
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is what we must not import
    fields: dict[str, _Field] = {}
    defaulted = False
    for name, kind in annotations.items():
        if isinstance(kind, str) and kind.replace("typing.", "").startswith(("ClassVar", "InitVar")):
            raise TypeError(f"{cls.__name__}.{name}: ClassVar and InitVar are not supported by @record")
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, _Field):
            f = value
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = _Field(value, MISSING, True, True)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(f.default)} for field {name} is not allowed: use default_factory")
        f.name, f.type = name, kind
        if f.default is MISSING and f.default_factory is MISSING:
            if defaulted:
                raise TypeError(f"non-default argument {name!r} follows default argument")
        else:
            defaulted = True
        fields[name] = f
    cls.__record_fields__ = fields  # type: ignore[attr-defined]  # set here, read through _fields()
    setattr(cls, "__match_args__", tuple(fields))  # noqa: B010 - mypy: a class attribute it cannot see
    setattr(cls, "__dataclass_fields__", _LazyDataclassFields())  # noqa: B010 - mypy must not see it
    own = cls.__dict__
    for method, make in (("__init__", _make_init), ("__repr__", _make_repr)):
        if method not in own:
            setattr(cls, method, _lazy(cls, method, make, frozen))
    if eq and "__eq__" not in own:
        cls.__eq__ = _lazy(cls, "__eq__", _make_eq, frozen)  # type: ignore[method-assign]  # methods are what a record sets on its class
    # dataclasses' hash table for unsafe_hash=False
    class_hash = own.get("__hash__", MISSING)
    explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))
    if eq and frozen and not explicit_hash:
        cls.__hash__ = _lazy(cls, "__hash__", _make_hash, frozen)  # type: ignore[method-assign]  # methods are what a record sets on its class
    elif eq and not frozen and not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]  # an unhashable record, as dataclasses makes it
    if frozen:
        for method in ("__setattr__", "__delattr__"):
            if method in own:
                raise TypeError(f"Cannot overwrite attribute {method} in class {cls.__name__}")
        names = frozenset(fields)

        def __setattr__(self: object, name: str, value: object) -> None:
            if type(self) is cls or name in names:
                raise _frozen_error()(f"cannot assign to field {name!r}")
            super(cls, self).__setattr__(name, value)  # type: ignore[misc]  # super() with the class in a variable: mypy cannot type it

        def __delattr__(self: object, name: str) -> None:
            if type(self) is cls or name in names:
                raise _frozen_error()(f"cannot delete field {name!r}")
            super(cls, self).__delattr__(name)  # type: ignore[misc]  # super() with the class in a variable: mypy cannot type it

        __setattr__.__qualname__ = f"{cls.__qualname__}.__setattr__"
        __delattr__.__qualname__ = f"{cls.__qualname__}.__delattr__"
        cls.__setattr__ = __setattr__  # type: ignore[method-assign]  # methods are what a record sets on its class
        cls.__delattr__ = __delattr__  # type: ignore[method-assign]  # methods are what a record sets on its class
    return cls


def _lazy(cls: type, method: str, make: Callable[[type, bool], Callable[..., Any]], frozen: bool
          ) -> Callable[..., Any]:
    """A stand-in that compiles the real method on its first call and puts it in its place."""
    def first_call(self: object, *args: object, **kwargs: object) -> Any:
        real = make(cls, frozen)
        real.__qualname__ = f"{cls.__qualname__}.{method}"
        setattr(cls, method, real)
        return real(self, *args, **kwargs)
    first_call.__qualname__ = f"{cls.__qualname__}.{method}"
    first_call.__name__ = method
    return first_call


def _compile(name: str, args: str, body: list[str], scope: dict[str, object]) -> Callable[..., Any]:
    text = f"def {name}({args}):\n" + "\n".join(f"    {line}" for line in body or ["pass"])
    exec(text, scope)
    return scope[name]  # type: ignore[return-value]  # exec defines it: object to mypy


def _fields(cls: type) -> dict[str, _Field]:
    return cls.__record_fields__  # type: ignore[attr-defined,no-any-return]  # set by _process, not declared on the class


def _make_init(cls: type, frozen: bool) -> Callable[..., Any]:
    scope: dict[str, object] = {"__object_setattr": object.__setattr__, "__has_factory": MISSING}
    params, body = ["self"], []
    # A frozen record's fields go straight into the instance __dict__ (what object.__setattr__ ends in
    # for a plain attribute, at a third of the cost), unless a class attribute of that name could
    # intercept the assignment (a data descriptor): then through object.__setattr__, as dataclasses.
    direct = frozen and not any(hasattr(type(cls.__dict__.get(f.name)), "__set__") for f in _fields(cls).values())
    if direct:
        body.append("__d = self.__dict__")
    for f in _fields(cls).values():
        if f.default_factory is not MISSING:
            scope[f"__factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=__has_factory")
            value = f"__factory_{f.name}() if {f.name} is __has_factory else {f.name}"
        elif f.default is not MISSING:
            scope[f"__default_{f.name}"] = f.default
            params.append(f"{f.name}=__default_{f.name}")
            value = f.name
        else:
            params.append(f.name)
            value = f.name
        if direct:
            body.append(f"__d[{f.name!r}] = {value}")
        elif frozen:
            body.append(f"__object_setattr(self, {f.name!r}, {value})")
        else:
            body.append(f"self.{f.name} = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    return _compile("__init__", ", ".join(params), body, scope)


def _make_repr(cls: type, frozen: bool) -> Callable[..., Any]:
    import reprlib

    shown = ", ".join(f"{f.name}={{self.{f.name}!r}}" for f in _fields(cls).values() if f.repr)
    plain = _compile("__repr__", "self", [f'return f"{{self.__class__.__qualname__}}({shown})"'], {})
    return reprlib.recursive_repr()(plain)  # as dataclasses: "..." for a record inside itself


def _make_eq(cls: type, frozen: bool) -> Callable[..., Any]:
    names = [f.name for f in _fields(cls).values() if f.compare]
    mine = "".join(f"self.{n}," for n in names)
    theirs = "".join(f"other.{n}," for n in names)
    return _compile("__eq__", "self, other", [
        "if other.__class__ is self.__class__:",
        f"    return ({mine})==({theirs})",
        "return NotImplemented"], {})


def _make_hash(cls: type, frozen: bool) -> Callable[..., Any]:
    names = "".join(f"self.{f.name}," for f in _fields(cls).values() if f.compare)
    return _compile("__hash__", "self", [f"return hash(({names}))"], {})


class _LazyDataclassFields:
    """``__dataclass_fields__``, built (importing dataclasses) the first time it is read, then kept."""

    def __get__(self, instance: object, owner: type) -> dict[str, object]:
        import dataclasses

        real: dict[str, object] = {}
        for f in _fields(owner).values():
            kw: dict[str, Any] = {"repr": f.repr, "compare": f.compare}
            if f.default is not MISSING:
                kw["default"] = f.default
            if f.default_factory is not MISSING:
                kw["default_factory"] = f.default_factory
            d: dataclasses.Field[object] = dataclasses.field(**kw)
            d.name, d.type = f.name, f.type  # (a string: from __future__ annotations)
            d._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what dataclasses.fields() keeps
            real[f.name] = d
        type.__setattr__(owner, "__dataclass_fields__", real)
        return real
