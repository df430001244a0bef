"""agent.records.record behaves as dataclasses.dataclass for what cdsim's classes use: the same
constructor, repr, equality, hashing, frozen assignment errors, match args, and the dataclasses
functions (fields, asdict, replace, is_dataclass) on its instances."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from agent import records


def _classes(decorator, field):
    @decorator(frozen=True)
    class Mark:
        line: int
        column: int

    @decorator(frozen=True)
    class Hook:
        location: str
        timeout: int = 3600
        runas: str | None = None
        mark: Mark | None = field(default=None, compare=False)

    @decorator
    class Result:
        did: str
        ok: bool
        hooks: list = field(default_factory=list)

        @property
        def label(self) -> str:
            return f"{self.did}:{self.ok}"

    return Mark, Hook, Result


def _outcomes(decorator, field):
    mark_cls, hook_cls, result_cls = _classes(decorator, field)
    h = hook_cls("a.sh", mark=mark_cls(1, 2))
    same_but_mark = hook_cls("a.sh", mark=mark_cls(3, 4))
    r = result_cls("d", True)
    out = [repr(h), repr(r), h == same_but_mark, hash(h) == hash(same_but_mark), h == hook_cls("b"),
           h != hook_cls("a.sh", 5), hook_cls.__match_args__, dataclasses.is_dataclass(h),
           dataclasses.is_dataclass(hook_cls), [f.name for f in dataclasses.fields(h)],
           [(f.compare, f.repr) for f in dataclasses.fields(hook_cls)], dataclasses.asdict(h),
           repr(dataclasses.replace(h, timeout=5)), dataclasses.asdict(r), r == result_cls("d", True),
           result_cls.__hash__ is None, hook_cls.timeout,
           result_cls("x", False).hooks is not result_cls("y", False).hooks,
           r.label, repr(copy.deepcopy(h)), h == 1, {h: 1}[hook_cls("a.sh")]]
    for attempt in (lambda: setattr(h, "location", "x"), lambda: delattr(h, "location"),
                    lambda: setattr(h, "other", 1)):
        with pytest.raises(AttributeError) as e:
            attempt()
        out.append((e.type.__name__, str(e.value)))
    with pytest.raises(TypeError) as e:
        hook_cls()
    out.append(str(e.value).split(".", 1)[-1])
    r.ok = False
    out.append(repr(r))
    return out


def test_a_record_behaves_as_a_dataclass():
    assert _outcomes(records.record, records.field) == _outcomes(dataclasses.dataclass, dataclasses.field)


def test_frozen_errors_are_dataclasses_own_once_it_is_imported():
    @records.record(frozen=True)
    class Point:
        x: int

    with pytest.raises(dataclasses.FrozenInstanceError):
        Point(1).x = 2


def test_a_module_level_record_pickles():
    from agent.appspec import HookScript, Mark

    h = HookScript("a.sh", 60, "app", False, Mark(3, 4))
    assert pickle.loads(pickle.dumps(h)) == h
    assert repr(pickle.loads(pickle.dumps(h))) == repr(h)


def test_records_replace():
    @records.record(frozen=True)
    class Config:
        root: str
        raw: dict = records.field(default_factory=dict, compare=False)

    c = Config("/a", {"k": 1})
    d = records.replace(c, root="/b")
    assert (d.root, d.raw, c.root) == ("/b", {"k": 1}, "/a")
