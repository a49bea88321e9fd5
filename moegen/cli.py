"""The `moegen` command: build | check | explain | verify | import-hf."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moegen.diagnostics import SpecError, render

EXIT_OK, EXIT_FAILED, EXIT_SPEC_ERROR = 0, 1, 2


def _spec_paths(given: list[str]) -> list[Path]:
    if given:
        return [Path(p) for p in given]
    return sorted(Path("specs").glob("*.moe"))


def _load(path: Path):
    """GeneratedSpec for path, or None after printing the spec's errors."""
    from moegen.compiler import generate

    if not path.is_file():
        print(f"{path}: error: no such spec file", file=sys.stderr)
        return None
    try:
        generated = generate(path)
    except SpecError as error:
        print(error, file=sys.stderr)
        return None
    if generated.spec.warnings:  # printed, the exit status stays what the command decides
        print(render(generated.spec.warnings, generated.spec.text), file=sys.stderr)
    return generated


def cmd_build(args) -> int:
    from moegen.codegen.build import HandEditedError, write

    status = EXIT_OK
    for path in _spec_paths(args.specs):
        generated = _load(path)
        if generated is None:
            status = EXIT_SPEC_ERROR
            continue
        try:
            target = write(generated, Path(args.out), force=args.force)
        except HandEditedError as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            status = max(status, EXIT_FAILED)
            continue
        print(f"{path}: {len(generated.files)} kernel(s) -> {target}")
    return status


def cmd_check(args) -> int:
    from moegen.codegen.build import check, extra_spec_dirs

    paths = _spec_paths(args.specs)
    problems, names, status = [], set(), EXIT_OK
    for path in paths:
        names.add(path.stem)  # a spec with errors still owns its folder: not 'extra'
        generated = _load(path)
        if generated is None:
            status = EXIT_SPEC_ERROR
            continue
        problems += check(generated, Path(args.out))
    if not args.specs:
        problems += extra_spec_dirs(Path(args.out), names)
    for problem in problems:
        print(f"{problem.path}: {problem.problem}")
    if problems:
        print(f"{len(problems)} generated file(s) out of date: run 'moegen build'", file=sys.stderr)
        return max(status, EXIT_FAILED)
    if status == EXIT_OK:
        print(f"generated/ is up to date ({len(paths)} spec(s))")
    return status


def cmd_explain(args) -> int:
    from moegen.explain import explain

    generated = _load(Path(args.spec))
    if generated is None:
        return EXIT_SPEC_ERROR
    plans = [p for p in generated.plans if args.variant in (None, p.kernel_name)]
    if not plans:
        print(f"{args.spec}: error: no kernel named '{args.variant}'", file=sys.stderr)
        return EXIT_FAILED
    print(explain(plans))
    return EXIT_OK


def cmd_verify(args) -> int:
    from moegen.verify import verify_plans

    generated = _load(Path(args.spec))
    if generated is None:
        return EXIT_SPEC_ERROR
    plans = [p for p in generated.plans if args.variant in (None, p.kernel_name)]
    if not plans:
        print(f"{args.spec}: error: no kernel named '{args.variant}'", file=sys.stderr)
        return EXIT_FAILED
    kernel_dir = Path(args.out) / generated.name
    missing = [p.kernel_name for p in plans if not (kernel_dir / f"{p.kernel_name}.py").exists()]
    if missing:
        print(f"{args.spec}: error: not built: {', '.join(missing)} (run 'moegen build {args.spec}')", file=sys.stderr)
        return EXIT_FAILED
    ok = verify_plans(plans, kernel_dir, tokens=args.tokens)
    print(f"{args.spec}: {'all kernels match the reference' if ok else 'MISMATCH'}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_import_hf(args) -> int:
    import json

    from moegen.import_hf import ConfigError, import_file

    path = Path(args.config)
    name = Path(args.output).stem if args.output else None
    try:
        text = import_file(path, tp=args.tp, ep=args.ep, name=name)
    except FileNotFoundError:
        print(f"{path}: error: no such config file", file=sys.stderr)
        return EXIT_FAILED
    except json.JSONDecodeError as error:
        print(f"{path}:{error.lineno}:{error.colno}: error: not JSON: {error.msg}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except ConfigError as error:
        print(f"{path}: error: {error}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="moegen", description="Generate NKI MoE kernels from .moe specs.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser(
        "build",
        help="generate kernels for specs (default: specs/*.moe)",
        description="Generate generated/<spec>/<kernel>.py for each spec, all or nothing per spec.",
    )
    build.add_argument("specs", nargs="*", metavar="SPEC")
    build.add_argument("--out", default="generated", help="output folder (default: generated)")
    build.add_argument("--force", action="store_true", help="overwrite generated files that were edited by hand")
    build.set_defaults(run=cmd_build)

    check = sub.add_parser(
        "check",
        help="exit 1 if generated/ differs from what build would write",
        description="List every stale, missing, extra or hand-edited generated file.",
    )
    check.add_argument("specs", nargs="*", metavar="SPEC")
    check.add_argument("--out", default="generated", help="generated folder (default: generated)")
    check.set_defaults(run=cmd_check)

    explain = sub.add_parser(
        "explain",
        help="print each variant's plan as a table",
        description="Tiles, loops, sharding, SBUF and PSUM use per variant.",
    )
    explain.add_argument("spec", metavar="SPEC")
    explain.add_argument("--variant", metavar="V", help="only this kernel")
    explain.set_defaults(run=cmd_explain)

    verify = sub.add_parser(
        "verify",
        help="run generated kernels in the simulator against the reference",
        description="Seeded random inputs, simulator vs NumPy reference, per element.",
    )
    verify.add_argument("spec", metavar="SPEC")
    verify.add_argument("--variant", metavar="V", help="only this kernel")
    verify.add_argument("--tokens", type=int, help="token count (default: each kernel's verify_tokens)")
    verify.add_argument("--out", default="generated", help="generated folder (default: generated)")
    verify.set_defaults(run=cmd_verify)

    import_hf = sub.add_parser(
        "import-hf",
        help="write a .moe spec from a Hugging Face config.json",
        description="The MoE layer of a Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, GPT-OSS or Llama-4 config as "
        "a spec with a router, tkg and cte kernel (and the shared experts' kernel). A field it cannot state is an error.",
    )
    import_hf.add_argument("config", metavar="CONFIG")
    import_hf.add_argument("-o", "--output", metavar="SPEC", help="write the spec here (default: stdout)")
    import_hf.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (dims tp)")
    import_hf.add_argument("--ep", type=int, default=1, help="expert-parallel degree (dims ep)")
    import_hf.set_defaults(run=cmd_import_hf)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
