"""The `moegen` command: build | check | explain | verify | profile | conformance | import-hf."""

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


def _os_error(error: OSError) -> str:
    """'Permission denied: generated/x' rather than '[Errno 13] Permission denied: ...'."""
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


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
        except OSError as error:
            print(f"{path}: error: cannot write to '{args.out}': {_os_error(error)}", file=sys.stderr)
            status = max(status, EXIT_FAILED)
            continue
        print(f"{path}: {len(generated.files)} kernel(s) -> {target}")
    return status


def cmd_check(args) -> int:
    from moegen.codegen.build import locked, recover

    out = Path(args.out)
    if not out.is_dir():
        return _check(args, out)
    try:
        with locked(out):  # no build of this folder runs meanwhile
            for message in recover(out):
                print(f"note: {message}", file=sys.stderr)
            return _check(args, out)
    except OSError as error:
        print(f"error: cannot check '{args.out}': {_os_error(error)}", file=sys.stderr)
        return EXIT_FAILED


def _check(args, out: Path) -> int:
    from moegen.codegen.build import check, extra_spec_dirs

    paths = _spec_paths(args.specs)
    problems, names, status = [], set(), EXIT_OK
    stale_specs = _stale_imported_specs(paths)
    for path in paths:
        names.add(path.stem)  # a spec with errors still owns its folder: not 'extra'
        generated = _load(path)
        if generated is None:
            status = EXIT_SPEC_ERROR
            continue
        problems += check(generated, out)
    if not args.specs:
        problems += extra_spec_dirs(out, names)
    for problem in problems:
        print(f"{problem.path}: {problem.problem}")
    for message in stale_specs:
        print(message)
    if stale_specs:
        print(
            f"{len(stale_specs)} spec(s) stale against their config: run 'moegen import-hf --refresh'", file=sys.stderr
        )
    if problems:
        print(f"{len(problems)} generated file(s) out of date: run 'moegen build'", file=sys.stderr)
    if problems or stale_specs:
        return max(status, EXIT_FAILED)
    if status == EXIT_OK:
        print(f"generated/ is up to date ({len(paths)} spec(s))")
    return status


def _stale_imported_specs(paths: list[Path]) -> list[str]:
    """One line per imported spec (first line a `moegen import-hf` record) that differs from its refresh."""
    import json

    from moegen.import_hf import ConfigError, RecordError, is_imported, stale_line

    messages = []
    for path in paths:
        if not path.is_file() or not is_imported(path):
            continue
        try:
            message = stale_line(path)
        except (RecordError, ConfigError, json.JSONDecodeError, OSError) as error:
            message = f"{path}: cannot refresh from its config: {error}"
        if message:
            messages.append(message)
    return messages


def _plans_named(spec: Path, generated, variant: str | None):
    """The spec's plans, or only the kernel `variant` (None after naming the valid kernels when there is none)."""
    plans = [p for p in generated.plans if variant in (None, p.kernel_name)]
    if not plans:
        names = ", ".join(p.kernel_name for p in generated.plans)
        print(f"{spec}: error: no kernel named '{variant}'; the kernels are: {names}", file=sys.stderr)
        return None
    return plans


def cmd_explain(args) -> int:
    from moegen.explain import explain

    generated = _load(Path(args.spec))
    if generated is None:
        return EXIT_SPEC_ERROR
    plans = _plans_named(Path(args.spec), generated, args.variant)
    if plans is None:
        return EXIT_FAILED
    print(explain(plans))
    return EXIT_OK


def cmd_verify(args) -> int:
    status, chosen = EXIT_OK, []
    for path in _spec_paths(args.specs):
        generated = _load(path)
        if generated is None:
            status = EXIT_SPEC_ERROR
            continue
        chosen.append((path, generated, [p for p in generated.plans if args.variant in (None, p.kernel_name)]))
    if chosen and not any(plans for _, _, plans in chosen):  # --variant names no kernel of any spec
        where = f"{chosen[0][0]}: " if len(chosen) == 1 else ""
        names = ", ".join(p.kernel_name for _, generated, _ in chosen for p in generated.plans)
        print(f"{where}error: no kernel named '{args.variant}'; the kernels are: {names}", file=sys.stderr)
        return EXIT_FAILED
    for path, generated, plans in chosen:
        if plans:  # with --variant, the specs that have such a kernel
            status = max(status, _verify_spec(path, generated, plans, args))
    return status


def _verify_spec(path: Path, generated, plans, args) -> int:
    from moegen.verify import verify_plans

    kernel_dir = Path(args.out) / generated.name
    missing = [p.kernel_name for p in plans if not (kernel_dir / f"{p.kernel_name}.py").exists()]
    if missing:
        print(f"{path}: error: not built: {', '.join(missing)} (run 'moegen build {path}')", file=sys.stderr)
        return EXIT_FAILED
    ok = verify_plans(plans, kernel_dir, tokens=args.tokens)
    print(f"{path}: {'all kernels match the reference' if ok else 'MISMATCH'}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_conformance(args) -> int:
    from moegen.conformance import main as conformance

    return conformance(args.paths)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _experts_used(text: str) -> int | str:
    """argparse type of --experts-used: 'all' or an integer >= 1."""
    return "all" if text == "all" else _positive_int(text)


def cmd_profile(args) -> int:
    import json

    from moegen.verify.profile import ProfileError, check_target, profile_plan

    generated = _load(Path(args.spec))
    if generated is None:
        return EXIT_SPEC_ERROR
    plans = [p for p in generated.plans if args.variant in (None, p.kernel_name)]
    if not plans:
        print(f"{args.spec}: error: no kernel named '{args.variant}'", file=sys.stderr)
        return EXIT_FAILED
    if (args.perfetto or args.plot) and len(plans) > 1:
        names = ", ".join(p.kernel_name for p in plans)
        print(f"{args.spec}: error: --perfetto / --plot need one kernel: pass --variant ({names})", file=sys.stderr)
        return EXIT_FAILED
    kernel_dir = Path(args.out) / generated.name
    missing = [p.kernel_name for p in plans if not (kernel_dir / f"{p.kernel_name}.py").exists()]
    if missing:
        print(f"{args.spec}: error: not built: {', '.join(missing)} (run 'moegen build {args.spec}')", file=sys.stderr)
        return EXIT_FAILED
    # a kernel planned for trn3 is not modeled on trn2: an error when asked for by name (or when it is the
    # only kind in the spec), otherwise skipped with a note and the spec's other kernels profiled
    refused = []
    for plan in plans:
        try:
            check_target(plan, args.target)
        except ProfileError as error:
            refused.append((plan, error))
    if refused and (args.variant or len(refused) == len(plans)):
        for _, error in refused:
            print(f"{args.spec}: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    for _, error in refused:
        print(f"{args.spec}: note: skipped {error}", file=sys.stderr)
    plans = [p for p in plans if all(p is not r for r, _ in refused)]
    results = {}
    for plan in plans:
        try:
            report, _, _ = profile_plan(
                plan, kernel_dir / f"{plan.kernel_name}.py", args.tokens, args.target, experts_used=args.experts_used
            )
        except (ProfileError, ValueError) as error:
            print(f"{args.spec}: error: {error}", file=sys.stderr)
            return EXIT_FAILED
        results[plan.kernel_name] = report
        if not args.json:
            print(f"{plan.kernel_name}:")
            print(report.text())
        if args.perfetto:
            from moegen.perf import perfetto

            perfetto.write(report, args.perfetto)
        if args.plot:
            from moegen.perf import plot

            plot.write(report, args.plot)
    if args.json:
        if len(results) == 1:
            print(json.dumps(next(iter(results.values())).to_dict(), indent=1))
        else:
            print(json.dumps({name: r.to_dict() for name, r in results.items()}, indent=1))
    return EXIT_OK


def cmd_import_hf(args) -> int:
    import json

    from moegen.import_hf import ConfigError, RecordError, import_file

    if args.refresh is not None:
        if args.config or args.output or args.tp != 1 or args.ep != 1 or args.quant:
            print(
                "error: --refresh takes spec files or folders only (each spec records its own options)", file=sys.stderr
            )
            return EXIT_SPEC_ERROR
        return _refresh_imported(args.refresh or ["specs"])
    if not args.config:
        print("error: give a config.json, or --refresh [SPEC or folder ...]", file=sys.stderr)
        return EXIT_SPEC_ERROR
    path = Path(args.config)
    output = Path(args.output) if args.output else None
    try:
        text = import_file(path, tp=args.tp, ep=args.ep, output=output, quant=args.quant)
    except FileNotFoundError:
        print(f"{path}: error: no such config file", file=sys.stderr)
        return EXIT_FAILED
    except json.JSONDecodeError as error:
        print(f"{path}:{error.lineno}:{error.colno}: error: not JSON: {error.msg}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except ConfigError as error:
        print(f"{path}: error: {error}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except RecordError as error:
        print(f"{output}: error: {error}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _refresh_imported(given: list[str]) -> int:
    """`moegen import-hf --refresh`: rewrite the layer part of every imported spec from its config."""
    import json

    from moegen.import_hf import ConfigError, RecordError, is_imported, refreshed

    specs = []
    for name in given:
        path = Path(name)
        if path.is_dir():
            specs += [spec for spec in sorted(path.glob("*.moe")) if is_imported(spec)]
        elif path.is_file():
            specs.append(path)
        else:
            print(f"{path}: error: no such spec file or folder", file=sys.stderr)
            return EXIT_FAILED
    status = EXIT_OK
    for spec in specs:
        try:
            text, options = refreshed(spec)
        except (RecordError, ConfigError, json.JSONDecodeError, OSError) as error:
            print(f"{spec}: error: {error}", file=sys.stderr)
            status = EXIT_SPEC_ERROR
            continue
        changed = text != spec.read_text()
        if changed:
            spec.write_text(text)
        print(f"{spec}: {'refreshed' if changed else 'up to date'} from {options.config}")
    return status


def cmd_tune(args) -> int:
    from moegen.tune import tune

    try:
        tuned = tune(Path(args.spec), args.variant, args.tokens, write=args.write)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_SPEC_ERROR
    if not tuned:
        named = f" named {args.variant!r}" if args.variant else ""
        print(f"{args.spec}: error: no tkg or cte kernel{named} to tune", file=sys.stderr)
        return EXIT_FAILED
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
    verify.add_argument("specs", nargs="*", metavar="SPEC")
    verify.add_argument("--variant", metavar="V", help="only the kernel of this name")
    verify.add_argument(
        "--tokens",
        type=_positive_int,
        metavar="T",
        help="token count, at least 1 (default: each kernel's verify_tokens)",
    )
    verify.add_argument("--out", default="generated", help="generated folder (default: generated)")
    verify.set_defaults(run=cmd_verify)

    conformance = sub.add_parser(
        "conformance",
        help="exit 1 if generated kernels use a name or keyword the real NKI API lacks",
        description="Check .py files against the NKI 0.6 API table shipped with moegen (moegen/nki_api.json).",
    )
    conformance.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: generated)")
    conformance.set_defaults(run=cmd_conformance)

    profile = sub.add_parser(
        "profile",
        help="model a generated kernel's time on Trainium (modeled, not measured)",
        description="Simulate on the verify inputs, schedule the trace on the engines with documented costs: "
        "modeled time, engine busy, roofline fraction, HBM traffic, MACs, longest stalls.",
    )
    profile.add_argument("spec", metavar="SPEC")
    profile.add_argument("--variant", metavar="V", help="only this kernel")
    profile.add_argument("--tokens", type=_positive_int, help="token count (default: each kernel's verify_tokens)")
    profile.add_argument("--target", choices=("trn2", "trn3"), default="trn2", help="cost table (default: trn2)")
    profile.add_argument(
        "--experts-used",
        type=_experts_used,
        metavar="N|all",
        help="cte: route over N experts or all (default: all, or 2K when all the weights exceed 1 GiB)",
    )
    profile.add_argument("--json", action="store_true", help="print the report as JSON")
    profile.add_argument("--perfetto", metavar="FILE", help="write the timeline as Chrome trace-event JSON")
    profile.add_argument("--plot", metavar="FILE.png", help="write a roofline + engine utilisation chart")
    profile.add_argument("--out", default="generated", help="generated folder (default: generated)")
    profile.set_defaults(run=cmd_profile)

    import_hf = sub.add_parser(
        "import-hf",
        help="write a .moe spec from a Hugging Face config.json",
        description="The MoE layer of a Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, GPT-OSS, Llama-4 or Nemotron-H "
        "config as a spec with a router, tkg and cte kernel (and the shared experts' kernel); an existing -o spec keeps "
        "its kernels. A field it cannot state is an error. --refresh rewrites every imported spec from its config.",
    )
    import_hf.add_argument("config", metavar="CONFIG", nargs="?")
    import_hf.add_argument("-o", "--output", metavar="SPEC", help="write the spec here (default: stdout)")
    import_hf.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (dims tp)")
    import_hf.add_argument("--ep", type=int, default=1, help="expert-parallel degree (dims ep)")
    import_hf.add_argument(
        "--quant", default="", metavar="OPTIONS", help="a quant statement, e.g. 'weights=mxfp4 activations=mxfp8'"
    )
    import_hf.add_argument(
        "--refresh",
        nargs="*",
        metavar="SPEC",
        help="rewrite the layer part of every imported spec (files, or folders: default specs) from its config",
    )
    import_hf.set_defaults(run=cmd_import_hf)

    tune = sub.add_parser(
        "tune",
        help="model the plan candidates of the tkg and cte kernels at a token count (modeled, not measured)",
        description="Plan, generate and model the candidates of each tkg kernel (mode, LNC split, gate/up "
        "loop, weight buffers, down columns) and of each cte kernel with an option at auto (LNC split, block, "
        "loop, resident or streamed weights, and for streamed weights the copies per chunk and the gate/up and "
        "down chunk widths; an untuned cte kernel named by --variant is shown every axis): "
        "the options the spec leaves at auto, one axis at a time; print them fastest first (chosen, "
        "runner-up) or why one is refused. --write records the choice of each `tuned` kernel in "
        "SPEC.choices.json, which builds read.",
    )
    tune.add_argument("spec", metavar="SPEC")
    tune.add_argument("--variant", metavar="V", help="only this kernel")
    tune.add_argument(
        "--tokens",
        type=_positive_int,
        default=None,
        help="token count (default: tkg T=1 and its tokens<= bound; cte its tune_tokens, 4096 unless set)",
    )
    tune.add_argument("--write", action="store_true", help="record the tuned kernels' choices in SPEC.choices.json")
    tune.set_defaults(run=cmd_tune)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
