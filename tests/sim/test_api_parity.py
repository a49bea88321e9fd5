"""Every function of moegen.sim.language / isa / collectives and the nki package matches moegen/nki_api.json (names,
parameter names, order, defaults); every listed API that is not implemented raises NotImplementedError
naming it."""

from __future__ import annotations

import inspect

import pytest

import moegen.sim as sim
from moegen.conformance import api_table
from moegen.sim import collectives, isa, kernel, language
from moegen.sim.dtypes import DType

API = api_table()  # moegen/nki_api.json, shipped with the package
NAMESPACES = {"nki.language": language, "nki.isa": isa, "nki.collectives": collectives}


def _expected(params):
    out = []
    for p in params:
        name = p["name"]
        if name.startswith("**"):
            out.append((name[2:], inspect.Parameter.VAR_KEYWORD, None))
        elif name.startswith("*"):
            out.append((name[1:], inspect.Parameter.VAR_POSITIONAL, None))
        else:
            out.append((name, None, p.get("default")))
    return out


def _render_default(value) -> str:
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, DType):
        return value.name
    if isinstance(value, str):
        return repr(value)
    if value is Ellipsis:
        return "..."
    if hasattr(value, "__class__") and value.__class__.__module__.startswith("moegen.sim") and hasattr(value, "name"):
        if isinstance(value, str):  # dtypes are strings
            return value
        owner = type(value).__name__
        return f"{owner}.{value.name}" if owner not in ("MemoryRegion",) else value.name
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


def _cases():
    for mod, ns in NAMESPACES.items():
        for fname, params in API[mod]["functions"].items():
            yield pytest.param(mod, ns, fname, params, id=f"{mod}.{fname}")
    nki_pkg = kernel._fake_modules()["nki"]
    for fname, params in API["nki"]["functions"].items():
        yield pytest.param("nki", nki_pkg, fname, params, id=f"nki.{fname}")


@pytest.mark.parametrize(("mod", "ns", "fname", "params"), list(_cases()))
def test_signature_matches_api_json(mod, ns, fname, params):
    fn = getattr(ns, fname, None)
    assert callable(fn), f"{mod}.{fname} missing"
    sig = inspect.signature(fn)
    got = list(sig.parameters.values())
    want = _expected(params)
    assert [p.name for p in got] == [w[0] for w in want], f"{mod}.{fname}: parameter names/order"
    for p, (name, kind, default) in zip(got, want):
        if kind is not None:
            assert p.kind == kind, f"{mod}.{fname}: {name} kind"
            continue
        if default is None:
            assert p.default is inspect.Parameter.empty, f"{mod}.{fname}: {name} must be required"
        else:
            assert _render_default(p.default) == default, f"{mod}.{fname}: default of {name}"


@pytest.mark.parametrize("mod", list(NAMESPACES))
def test_stubs_raise_not_implemented_naming_the_api(mod):
    ns = NAMESPACES[mod]
    for fname in ns.NOT_IMPLEMENTED:
        fn = getattr(ns, fname)
        args = [None] * sum(
            1
            for p in inspect.signature(fn).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD
        )
        with pytest.raises(NotImplementedError, match=f"{mod}.{fname}"):
            fn(*args)


def test_enums_and_classes_present():
    for mod, ns in NAMESPACES.items():
        for cname, spec in API[mod]["classes"].items():
            cls = getattr(ns, cname if cname != "_TileSize" else "tile_size", None)
            assert cls is not None, f"{mod}.{cname}"
            for member, value in spec["members"].items():
                if member == "reinterpret_cast":
                    continue
                m = getattr(cls, member)
                if "Enum" in spec["bases"]:
                    assert repr(m.value) == value or str(m.value) == value, f"{mod}.{cname}.{member}"
        for name in API[mod]["names"]:
            assert hasattr(ns, name), f"{mod}.{name}"


def test_nkitensor_methods_match():
    from moegen.sim.tensor import NkiTensor

    spec = API["nki.language"]["classes"]["NkiTensor"]
    for mname, m in spec["methods"].items():
        if mname == "__init__":
            continue
        fn = getattr(NkiTensor, mname)
        names = [p.name for p in inspect.signature(fn).parameters.values()][1:]
        assert names == [p["name"] for p in m["params"]], f"NkiTensor.{mname}"
    for attr in spec["attributes"]:
        assert hasattr(NkiTensor, attr) or attr in NkiTensor.__slots__, f"NkiTensor.{attr}"


def test_public_entry_points():
    assert callable(sim.simulate) and callable(sim.load_module) and callable(sim.jit)
