"""Static check of a kernel file against the Python subset the NKI compiler accepts.

The simulator runs kernels as ordinary Python, so it would accept code the NKI compiler rejects. This
AST pass flags, in functions decorated with `nki.jit` and in every function they call (helpers are
inlined by the compiler):

* imports of anything but nki modules (``nki``, ``nki.language``, ``nki.isa``, ``nki.collectives``);
* data-dependent Python control flow: ``if`` / ``while`` / ``x if c else y`` / ``assert`` / ``bool()`` /
  ``int()`` on a tensor or register value (compile-time facts such as ``t.shape`` are fine);
  use ``nl.while_loop`` / ``nl.fori_loop`` / predicated instructions instead;
* closures over tensors (severity "warning": the docs show closures only as ``nl.fori_loop`` /
  ``nl.while_loop`` bodies; general support is unverified): a ``lambda`` or nested function capturing
  a tensor or register of the enclosing kernel; ``global`` / ``nonlocal`` statements (errors);
* constructs of the 0.3-0.6 parser frontend that fail to compile: keyword-only ``*`` separators,
  ``*args`` / ``**kwargs`` in the kernel signature, ``is`` / ``is not``, ``try``, ``with`` (other than
  ``nl.no_reorder()``), ``yield``, ``async``, classes not derived from ``nl.NKIObject``, dict literals
  with non-string keys (in a kernel, or a module-level dict a kernel reads), list default arguments, a
  jit kernel calling another jit kernel;
* ``raise`` in a kernel (not documented inside kernels; nki-library checks arguments with ``assert``);
* an allocation (``nl.ndarray``, ``nl.zeros``, ...) inside a dynamic-loop body (a function passed to
  ``nl.fori_loop`` / ``nl.while_loop``, or a ``nl.dynamic_range`` loop), or in a helper it calls: the
  body is emitted once and its tensors are allocated once for the whole loop (NKI Dynamic Loops), so
  the body's tiles are allocated outside it;
* API conformance: any ``nki.*`` / ``nl.*`` / ``nisa.*`` name or keyword argument that api.json does not
  list (a finding of severity "error"); uses of deprecated APIs (``nl.dynamic_range``, ``affine_range``,
  ``sequential_range``, ``static_range``) are findings of severity "warning".
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from moegen.sim.api_signatures import SIGNATURES
from moegen.sim.errors import NkiSimError

NKI_MODULES = {
    "nki": "nki",
    "nki.language": "nki.language",
    "nki.isa": "nki.isa",
    "nki.collectives": "nki.collectives",
}
DEPRECATED = {"dynamic_range", "affine_range", "sequential_range", "static_range"}
COMPILE_TIME_ATTRS = {"shape", "dtype", "ndim", "size", "buffer", "name", "offset", "strides"}
TENSOR_MAKERS = {
    "ndarray",
    "zeros",
    "ones",
    "full",
    "zeros_like",
    "empty_like",
    "rand",
    "shared_constant",
    "shared_identity_matrix",
    "load",
    "load_transpose2d",
    "matmul",
    "transpose",
    "copy",
    "register_alloc",
}
LOOP_BODY_TAKERS = {"fori_loop", "while_loop"}
ALLOCATORS = TENSOR_MAKERS - {"register_alloc"}  # calls that allocate SBUF / PSUM / HBM memory

_EXTRA_NAMES = {
    "nki.language": {
        "bfloat16",
        "bool_",
        "float16",
        "float32",
        "float4_e2m1fn_x4",
        "float8_e4m3",
        "float8_e4m3fn",
        "float8_e4m3fn_x4",
        "float8_e5m2",
        "float8_e5m2_x4",
        "float8_e8m0fnu",
        "int16",
        "int32",
        "int8",
        "tfloat32",
        "uint16",
        "uint32",
        "uint8",
        "hbm",
        "private_hbm",
        "psum",
        "sbuf",
        "shared_hbm",
        "tile_size",
        "average",
        "bypass",
        "prelu",
        "MemoryRegion",
        "NKIObject",
        "NkiTensor",
        "DType",
    },
    "nki.isa": {
        "NkiInstruction",
        "NkiValidationError",
        "VirtualRegister",
        "dge_mode",
        "dma_engine",
        "engine",
        "matmul_perf_mode",
        "nc_version",
        "oob_mode",
        "reduce_cmd",
        "gpsimd_engine",
        "scalar_engine",
        "tensor_engine",
        "unknown_engine",
        "vector_engine",
    },
    "nki.collectives": {"ReplicaGroup"},
    "nki": {"language", "isa", "collectives"},
}


@dataclass(frozen=True)
class Finding:
    """One static-check result: where, which rule, what, and whether it is an error or a warning."""

    line: int
    col: int
    rule: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.severity}: [{self.rule}] {self.message}"


def _params(module: str, fn: str) -> set[str] | None:
    sig = SIGNATURES.get(module, {}).get(fn)
    if sig is None:
        return None
    names = set()
    for part in sig.split(","):
        p = part.strip().split("=")[0].strip()
        if p.startswith("**"):
            return None  # accepts any keyword
        if p:
            names.add(p.lstrip("*"))
    return names


class _Checker(ast.NodeVisitor):
    def __init__(self, tree: ast.Module):
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> nki module
        self.functions: dict[str, ast.FunctionDef] = {}
        self.jit_names: set[str] = set()
        self.tree = tree

    def add(self, node, rule: str, message: str, severity: str = "error") -> None:
        self.findings.append(
            Finding(getattr(node, "lineno", 0), getattr(node, "col_offset", 0), rule, message, severity)
        )

    # -- module level -------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        self.module_dicts = self.non_string_key_dicts()
        for node in self.tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.check_import(node)
            elif isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
                if any(self.is_jit(d) for d in node.decorator_list):
                    self.jit_names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                self.check_class(node)
            elif isinstance(node, ast.AsyncFunctionDef):
                self.add(node, "async", f"async function '{node.name}' is not NKI")
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in self.tree.body:
                self.check_import(node)
        kernels = [self.functions[n] for n in sorted(self.jit_names)]
        seen: set[str] = set()
        todo = list(kernels)
        while todo:
            fn = todo.pop()
            if fn.name in seen:
                continue
            seen.add(fn.name)
            self.check_function(fn, is_kernel=fn.name in self.jit_names)
            for call in ast.walk(fn):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                    callee = call.func.id
                    if callee in self.jit_names and callee != fn.name:
                        self.add(
                            call,
                            "jit-call",
                            f"kernel '{fn.name}' calls jit kernel '{callee}': only the "
                            "top-level kernel carries @nki.jit; helpers are plain functions",
                        )
                    elif callee in self.functions:
                        todo.append(self.functions[callee])
        self.check_loop_bodies(kernels)
        self.check_api_names()
        return sorted(self.findings, key=lambda f: (f.line, f.col, f.rule))

    def non_string_key_dicts(self) -> dict[str, ast.AST]:
        """Module-level names bound to a dict (literal, comprehension or dict() call) whose keys are not
        all string constants."""
        found = {}
        for node in self.tree.body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            v = node.value
            bad = (
                (isinstance(v, ast.Dict) and not _string_keys(v))
                or isinstance(v, ast.DictComp)
                or (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "dict")
            )
            if bad:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        found[t.id] = node
        return found

    # -- dynamic-loop bodies -------------------------------------------------------------------------
    def check_loop_bodies(self, kernels: list[ast.FunctionDef]) -> None:
        """No allocation inside a dynamic-loop body (or a helper it calls)."""
        for kernel in kernels:
            local_fns = {n.name: n for n in ast.walk(kernel) if isinstance(n, ast.FunctionDef) and n is not kernel}
            for node in ast.walk(kernel):
                if isinstance(node, ast.For) and self.is_dynamic_range(node.iter):
                    self.check_no_allocation(node, "nl.dynamic_range loop", local_fns, set())
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                if node.func.attr not in LOOP_BODY_TAKERS or self.resolve(node.func) is None:
                    continue
                for arg in list(node.args) + [k.value for k in node.keywords]:
                    if isinstance(arg, ast.Name):
                        body = local_fns.get(arg.id) or self.functions.get(arg.id)
                        if body is not None:
                            what = f"nl.{node.func.attr} body '{body.name}'"
                            self.check_no_allocation(body, what, local_fns, set())

    def is_dynamic_range(self, it: ast.AST) -> bool:
        return isinstance(it, ast.Call) and self.resolve(it.func) == ("nki.language", "dynamic_range")

    def check_no_allocation(self, scope: ast.AST, what: str, local_fns: dict, seen: set) -> None:
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            r = self.resolve(node.func)
            if r is not None and r[0] == "nki.language" and r[1] in ALLOCATORS:
                self.add(
                    node,
                    "loop-alloc",
                    f"nl.{r[1]} inside the {what}: a dynamic-loop body is emitted once and its tensors are "
                    "allocated once for the whole loop (NKI Dynamic Loops); allocate the tile outside the loop",
                )
            elif isinstance(node.func, ast.Name) and node.func.id not in seen:
                callee = local_fns.get(node.func.id) or self.functions.get(node.func.id)
                if callee is not None and callee is not scope:
                    seen.add(node.func.id)
                    self.check_no_allocation(callee, what, local_fns, seen)

    def check_import(self, node) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NKI_MODULES:
                    self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "nki"
                else:
                    self.add(node, "import", f"import {a.name}: kernels may import only nki modules")
        else:
            mod = node.module or ""
            if mod == "__future__":
                return
            if mod == "nki":
                for a in node.names:
                    full = f"nki.{a.name}"
                    if full in NKI_MODULES:
                        self.aliases[a.asname or a.name] = full
                    elif a.name not in SIGNATURES["nki"]:
                        self.add(node, "api", f"from nki import {a.name}: not in the NKI API")
                return
            if mod not in NKI_MODULES:
                self.add(node, "import", f"from {mod} import ...: kernels may import only nki modules")

    def is_jit(self, dec) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        return (
            isinstance(target, ast.Attribute)
            and target.attr == "jit"
            and isinstance(target.value, ast.Name)
            and self.aliases.get(target.value.id) == "nki"
        )

    def check_class(self, node: ast.ClassDef) -> None:
        ok = all(isinstance(b, ast.Attribute) and b.attr == "NKIObject" for b in node.bases) and node.bases
        if not ok:
            self.add(node, "class", f"class '{node.name}' must derive from nl.NKIObject only")

    # -- functions ------------------------------------------------------------------------------------
    def check_function(self, fn: ast.FunctionDef, is_kernel: bool) -> None:
        args = fn.args
        if is_kernel:
            if args.kwonlyargs:
                self.add(fn, "signature", f"kernel '{fn.name}': no keyword-only ('*') parameters")
            if args.vararg or args.kwarg:
                self.add(fn, "signature", f"kernel '{fn.name}': no *args / **kwargs parameters")
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
            if isinstance(d, ast.List):
                self.add(d, "signature", f"function '{fn.name}': list default argument (use a tuple)")
        tensors = self.tensor_names(fn, is_kernel)
        for node in ast.walk(fn):
            self.check_node(node, fn, tensors)

    def tensor_names(self, fn: ast.FunctionDef, is_kernel: bool) -> set[str]:
        """Names holding tensors / registers at run time (heuristic): results of allocation calls."""
        names: set[str] = set()  # kernel parameters may be compile-time values: not included
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                f = node.value.func
                if isinstance(f, ast.Attribute) and f.attr in TENSOR_MAKERS:
                    for t in node.targets:
                        for n in ast.walk(t):
                            if isinstance(n, ast.Name):
                                names.add(n.id)
        return names

    @staticmethod
    def is_register(fn: ast.FunctionDef, name: str) -> bool:
        """`name` is assigned (only) from register_alloc calls in `fn`."""
        seen = False
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                v = node.value
                if not (
                    isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "register_alloc"
                ):
                    return False
                seen = True
        return seen

    def data_dependent(self, test: ast.AST, tensors: set[str]) -> str | None:
        """Name of a tensor / register used for its value in `test`, if any."""
        parents: dict[ast.AST, ast.AST] = {}
        for p in ast.walk(test):
            for c in ast.iter_child_nodes(p):
                parents[c] = p
        for n in ast.walk(test):
            if isinstance(n, ast.Name) and n.id in tensors:
                par = parents.get(n)
                if isinstance(par, ast.Attribute) and par.attr in COMPILE_TIME_ATTRS:
                    continue
                if (
                    isinstance(par, ast.Call)
                    and isinstance(par.func, ast.Name)
                    and par.func.id in ("len", "isinstance", "type")
                ):
                    continue
                if isinstance(par, ast.Subscript) and par.value is n:
                    return n.id
                if isinstance(par, ast.Call) and isinstance(par.func, ast.Attribute):
                    continue  # passed to a function: cannot tell
                return n.id
        return None

    def check_node(self, node, fn, tensors: set[str]) -> None:
        if isinstance(node, ast.While) and isinstance(node.test, ast.Name) and self.is_register(fn, node.test.id):
            # NKI 0.6 VirtualRegister docstring: `while reg:` with a register_load in the body is a
            # dynamic loop; deprecated in 0.6 (use nl.while_loop), removed in 0.7
            self.add(
                node,
                "deprecated",
                f"`while {node.test.id}:` on a register is deprecated (NKI 0.6) and removed in NKI 0.7 "
                "(use nl.while_loop)",
                severity="warning",
            )
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            name = self.data_dependent(node.test, tensors)
            if name:
                kind = {
                    ast.If: "if",
                    ast.While: "while",
                    ast.IfExp: "conditional expression",
                    ast.Assert: "assert",
                }[type(node)]
                self.add(
                    node,
                    "control-flow",
                    f"{kind} on the runtime value of '{name}': NKI has no data-dependent "
                    "Python control flow (use nl.while_loop / nl.fori_loop or predicated instructions)",
                )
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("bool", "int", "float")
        ):
            for a in node.args:
                if isinstance(a, ast.Name) and a.id in tensors:
                    self.add(
                        node,
                        "control-flow",
                        f"{node.func.id}() of tensor/register '{a.id}': its value exists only at run time",
                    )
        elif isinstance(node, ast.Compare) and any(isinstance(o, (ast.Is, ast.IsNot)) for o in node.ops):
            self.add(node, "is", "'is' / 'is not' are not supported in NKI kernels (use == / !=)")
        elif isinstance(node, ast.Try):
            self.add(node, "try", "try/except is not supported in NKI kernels")
        elif isinstance(node, ast.With):
            for item in node.items:
                e = item.context_expr
                if not (isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "no_reorder"):
                    self.add(node, "with", "'with' is only allowed for nl.no_reorder()")
        elif isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            self.add(node, "yield", "generators / await are not NKI")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.add(
                node,
                "closure",
                f"'{type(node).__name__.lower()}' statements are not supported in NKI kernels",
            )
        elif isinstance(node, ast.Dict):
            if not _string_keys(node):
                self.add(node, "dict", "dict keys in NKI kernels must be string constants")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in self.module_dicts:
            self.add(
                node,
                "dict",
                f"kernel '{fn.name}' reads module-level dict '{node.id}' (line "
                f"{self.module_dicts[node.id].lineno}) whose keys are not all string constants: NKI dict keys "
                "must be strings (use a tuple)",
            )
        elif isinstance(node, ast.Raise):
            self.add(
                node,
                "raise",
                f"raise in kernel code '{fn.name}': not documented inside NKI kernels; check arguments with "
                "assert (the nki-library idiom)",
            )
        elif isinstance(node, ast.ClassDef):
            self.check_class(node)
        elif isinstance(node, (ast.Lambda, ast.FunctionDef)) and node is not fn:
            self.check_closure(node, fn, tensors)

    def check_closure(self, inner, fn, tensors: set[str]) -> None:
        if isinstance(inner, ast.FunctionDef) and self.is_loop_body(inner.name, fn):
            return
        local = {a.arg for a in inner.args.args}
        body = inner.body if isinstance(inner, ast.Lambda) else inner
        for n in ast.walk(body):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                local.add(n.id)
        for n in ast.walk(body):
            if isinstance(n, ast.Name) and n.id in tensors and n.id not in local:
                what = "lambda" if isinstance(inner, ast.Lambda) else f"nested function '{inner.name}'"
                self.add(
                    inner,
                    "closure",
                    f"{what} captures tensor/register '{n.id}' of the enclosing kernel "
                    "(closures over tensors are only documented for nl.fori_loop / nl.while_loop bodies; "
                    "pass tensors as arguments)",
                    "warning",
                )
                return

    def is_loop_body(self, name: str, fn) -> bool:
        for n in ast.walk(fn):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr in LOOP_BODY_TAKERS
                and any(isinstance(a, ast.Name) and a.id == name for a in list(n.args) + [k.value for k in n.keywords])
            ):
                return True
        return False

    # -- API conformance -----------------------------------------------------------------------------
    def resolve(self, node) -> tuple[str, str] | None:
        """(module, name) for `alias.name` or `nki.language.name` attribute chains."""
        if not isinstance(node, ast.Attribute):
            return None
        v = node.value
        if isinstance(v, ast.Name) and v.id in self.aliases:
            return self.aliases[v.id], node.attr
        if (
            isinstance(v, ast.Attribute)
            and isinstance(v.value, ast.Name)
            and self.aliases.get(v.value.id) == "nki"
            and v.attr in ("language", "isa", "collectives")
        ):
            return f"nki.{v.attr}", node.attr
        return None

    def check_api_names(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                r = self.resolve(node)
                if r is None:
                    continue
                mod, name = r
                if mod == "nki" and name in ("language", "isa", "collectives"):
                    continue
                if name not in SIGNATURES.get(mod, {}) and name not in _EXTRA_NAMES.get(mod, set()):
                    self.add(node, "api", f"{mod}.{name} is not in the NKI API (api.json)")
                elif name in DEPRECATED:
                    self.add(
                        node,
                        "deprecated",
                        f"{mod}.{name} is deprecated (use Python range() or nl.fori_loop)",
                        "warning",
                    )
            if isinstance(node, ast.Call):
                r = self.resolve(node.func)
                if r is None:
                    continue
                allowed = _params(*r)
                if allowed is None:
                    continue
                for kw in node.keywords:
                    if kw.arg is not None and kw.arg not in allowed:
                        self.add(kw.value, "api", f"{r[0]}.{r[1]} has no parameter '{kw.arg}'")


def _string_keys(node: ast.Dict) -> bool:
    """Every key of the dict literal is a string constant (``**other`` entries count as not)."""
    return all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys)


def static_check(source_or_path, filename: str | None = None, strict: bool = False) -> list[Finding]:
    """Check kernel source text (or a path to a .py file). Returns findings; strict=True raises NkiSimError
    listing the errors (warnings do not raise)."""
    src = source_or_path
    if isinstance(src, os.PathLike) or (
        isinstance(src, str) and "\n" not in src and src.endswith(".py") and os.path.isfile(src)
    ):
        filename = filename or os.fspath(src)
        with open(src, encoding="utf-8") as f:
            src = f.read()
    try:
        tree = ast.parse(src, filename or "<kernel>")
    except SyntaxError as e:
        raise NkiSimError(f"static_check: syntax error in {filename or '<kernel>'}: {e}") from None
    findings = _Checker(tree).run()
    if strict:
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            raise NkiSimError(
                f"static_check: {filename or '<kernel>'} uses Python the NKI compiler rejects:\n"
                + "\n".join(str(f) for f in errors)
            )
    return findings
