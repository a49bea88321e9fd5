"""NotImplementedError stubs with the real signatures, for listed APIs the simulator does not implement."""

from __future__ import annotations

from moegen.sim.api_signatures import SIGNATURES


def make_stub(module: str, name: str, namespace: dict):
    """A function `name` with the api.json parameters of `module.name` that raises NotImplementedError."""
    params = SIGNATURES[module][name]
    src = f"def {name}({params}):\n    raise NotImplementedError('{module}.{name} is not implemented in moegen.sim')\n"
    scope: dict = {}
    exec(src, dict(namespace), scope)  # noqa: S102 - builds a signature-exact stub from trusted data
    fn = scope[name]
    fn.__doc__ = f"{module}.{name}: not implemented in moegen.sim (raises NotImplementedError)."
    fn.__module__ = "moegen.sim." + module.split(".")[-1]
    fn._nki_stub = True
    return fn


def fill_missing(module: str, namespace: dict) -> list[str]:
    """Define a stub in `namespace` for every api.json function of `module` it lacks; returns their names."""
    missing = [n for n in SIGNATURES[module] if not callable(namespace.get(n))]
    for n in missing:
        namespace[n] = make_stub(module, n, namespace)
    return missing
