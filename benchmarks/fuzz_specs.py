"""Mutation fuzz of every spec in specs/: each mutant must end in a build (exit 0, files written) or in
located errors (exit 2, every error line `file:line:col: error: ...`), never in a traceback or another
exit status. Mutants are token edits (delete, duplicate, swap, insert, huge numbers, odd characters,
truncation, raw bytes, another number or name of the spec in a token's place), long names (253 characters to 5 MB), 5 MB padding (a comment, blank lines, one
long line, repeated kernels) and specs of 3,000 kernels. Each runs `moegen build` in this process.

    .venv/bin/python benchmarks/fuzz_specs.py [--mutants 1000] [--seed 1] [--big-every 250]

Prints, per spec, the mutants run, how many built and how many were refused, and the slowest one.
tests/spec/test_fuzz_specs.py runs a few of the same mutants on every `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from moegen import cli

REPO = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"\s+|#[^\n]*|->|<=|>=|[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|.", re.S)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
NUMBERS = ["0", "1", "2", "3", "7", "8", "64", "127", "128", "129", "256", "1000", "4096", "65536", "2147483648", "0.5"]
HUGE = ["1" + "0" * 400, "1e999", "-1e999", "9" * 5000, "0", "-0", "99999999999999999999", "1e-999", "0.5", "-1"]
NASTY = [
    "\x00",
    "\ufeff",
    "\u2028",
    "\x0c",
    "\r",
    "é",
    "名前",
    "🙂",
    "'",
    '"',
    "\\",
    "${x}",
    "{{",
    "}}",
    "\t",
    ";;",
    "{",
    "}",
]
FIVE_MB = 5 * 1024 * 1024
LONG_NAMES = [252, 253, 254, 300, 5000]
LOCATED = re.compile(r"^(?P<path>.+\.moe):(?P<line>\d+):(?P<col>\d+): error: \S")
KERNEL_LINE = re.compile(r"^\s*kernel\s+(\w+)\s*:\s*(\w+)(.*)$", re.M)


def long_name(length: int, rng: random.Random) -> str:
    return rng.choice("abcdefghijklmnopqrstuvwxyz_") + "".join(rng.choices("abcxyz_019", k=length - 1))


def token_mutant(text: str, rng: random.Random) -> bytes:
    """One to three token edits of the spec, sometimes with raw bytes inserted."""
    tokens = TOKEN.findall(text)
    for _ in range(rng.randint(1, 3)):
        if not tokens:
            tokens = [""]
        index = rng.randrange(len(tokens))
        kind = rng.choice(
            ["delete", "duplicate", "swap", "insert", "huge", "nasty", "truncate", "name", "number", "word"]
        )
        if kind == "delete":
            del tokens[index]
        elif kind == "duplicate":
            tokens.insert(index, tokens[index])
        elif kind == "swap":
            other = rng.randrange(len(tokens))
            tokens[index], tokens[other] = tokens[other], tokens[index]
        elif kind == "insert":
            tokens.insert(index, "".join(chr(rng.randint(1, 0x3000)) for _ in range(rng.randint(1, 8))))
        elif kind == "huge":
            tokens[index] = rng.choice(HUGE)
        elif kind == "nasty":
            tokens.insert(index, rng.choice(NASTY))
        elif kind == "truncate":
            del tokens[index:]
        elif kind in ("number", "word"):  # a value or name the syntax still accepts: reaches validation and plans
            pattern = NUMBER if kind == "number" else NAME
            spots = [i for i, t in enumerate(tokens) if pattern.fullmatch(t)]
            choices = NUMBERS if kind == "number" else sorted({t for t in tokens if NAME.fullmatch(t)})
            if spots:
                tokens[rng.choice(spots)] = rng.choice(choices)
        else:  # a name made long: a kernel, family, option, stage or setting name
            names = [i for i, t in enumerate(tokens) if NAME.fullmatch(t)]
            if names:
                tokens[rng.choice(names)] = long_name(rng.choice(LONG_NAMES), rng)
    data = "".join(tokens).encode()
    if rng.random() < 0.25:
        at = rng.randint(0, len(data))
        data = data[:at] + rng.randbytes(rng.randint(1, 6)) + data[at:]
    return data


def many_kernels(text: str, count: int) -> str:
    """The spec with its kernel lines repeated under new names until it has `count` kernels."""
    kernels = KERNEL_LINE.findall(text)
    if not kernels:
        return text
    names = {name for name, _, _ in kernels}
    lines = []
    for index in range(count):
        name, base, rest = kernels[index % len(kernels)]
        copy = index // len(kernels)
        base = f"{base}_c{copy}" if base in names else base
        lines.append(f"  kernel {name}_c{copy} : {base}{rest.split('#')[0]}")
    closing = text.rindex("}")
    return KERNEL_LINE.sub("", text[:closing]) + "\n".join(lines) + "\n" + text[closing:]


def big_mutant(text: str, rng: random.Random) -> bytes:
    """A spec of about 5 MB, a 5 MB name, or 3,000 kernels, with a token edit half of the time."""
    kind = rng.choice(["comment", "blank_lines", "long_line", "kernel_lines", "long_name", "kernels_3000"])
    if kind == "comment":
        big = text + "# " + "x" * FIVE_MB + "\n"
    elif kind == "blank_lines":
        big = text + "\n" * FIVE_MB
    elif kind == "long_line":
        at = text.index("\n", text.index("{")) if "{" in text else 0
        big = text[:at] + " " * FIVE_MB + text[at:]
    elif kind == "kernel_lines":  # one kernel line repeated to 5 MB: every copy but the first is a duplicate
        match = KERNEL_LINE.search(text)
        line = (match.group(0) if match else "  kernel k : router") + "\n"
        closing = text.rindex("}") if "}" in text else len(text)
        big = text[:closing] + line * (FIVE_MB // len(line)) + text[closing:]
    elif kind == "long_name":
        names = [m for m in NAME.finditer(text)]
        chosen = rng.choice(names)
        big = text[: chosen.start()] + long_name(FIVE_MB, rng) + text[chosen.end() :]
    else:
        big = many_kernels(text, 3000)
    return token_mutant(big, rng) if rng.random() < 0.5 and kind != "kernels_3000" else big.encode()


def build(data: bytes, folder: Path) -> tuple[str, str]:
    """('built' | 'refused', '') or ('FAIL', what went wrong) for one mutant, built with `moegen build`."""
    spec = folder / "specs" / "mutant.moe"
    spec.write_bytes(data)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(["build", str(spec), "--out", str(folder / "out"), "--force"])
    except BaseException:  # noqa: B036 - anything escaping the command is the failure this script looks for
        return "FAIL", traceback.format_exc()
    text = err.getvalue()
    if "Traceback" in text:
        return "FAIL", text
    if status == 0:
        return "built", ""
    if status != 2:
        return "FAIL", f"exit {status}: {text[:2000]}"
    headers = [line for line in text.splitlines() if not line.startswith("  ")]
    line_count = data.count(b"\n") + 1
    for header in headers or ["(no error printed)"]:
        match = LOCATED.match(header)
        if not match or match["path"] != str(spec) or not 1 <= int(match["line"]) <= line_count:
            return "FAIL", f"not a located error: {header[:300]}"
    return "refused", ""


def fuzz(path: Path, mutants: int, seed: int, big_every: int, folder: Path) -> dict:
    """Run `mutants` mutants of the spec at path; returns counts, the slowest time and the failures."""
    rng = random.Random(f"{seed}:{path.name}")
    text = path.read_text()
    stats = {"built": 0, "refused": 0, "FAIL": 0, "big": 0, "slowest": 0.0, "failures": []}
    for index in range(mutants):
        big = big_every > 0 and index % big_every == big_every - 1
        data = big_mutant(text, rng) if big else token_mutant(text, rng)
        start = time.perf_counter()
        outcome, detail = build(data, folder)
        stats["slowest"] = max(stats["slowest"], time.perf_counter() - start)
        stats[outcome] += 1
        stats["big"] += big
        if outcome == "FAIL":
            keep = folder / f"failure_{path.stem}_{index}.moe"
            keep.write_bytes(data)
            stats["failures"].append(f"{keep}: {detail.strip().splitlines()[-1][:300]}")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000, help="mutants per spec")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--big-every", type=int, default=250, help="every N-th mutant is a 5 MB / 3,000-kernel one")
    parser.add_argument("--keep", default=None, help="folder to keep failing mutants in (default: a temp folder)")
    parser.add_argument("specs", nargs="*", help="default: specs/*.moe")
    args = parser.parse_args()
    specs = [Path(p) for p in args.specs] or sorted((REPO / "specs").glob("*.moe"))
    failures, total, start = [], 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.keep or temp)
        (folder / "specs").mkdir(parents=True, exist_ok=True)
        for spec in specs:
            stats = fuzz(spec, args.mutants, args.seed, args.big_every, folder)
            total += args.mutants
            failures += stats["failures"]
            print(
                f"{spec.name:32s} {args.mutants} mutants ({stats['big']} big): {stats['built']} built, "
                f"{stats['refused']} refused with located errors, {stats['FAIL']} failed; "
                f"slowest {stats['slowest']:.1f} s",
                flush=True,
            )
        for failure in failures:
            print(f"FAIL {failure}")
        print(f"{total} mutants of {len(specs)} specs in {time.perf_counter() - start:.0f} s: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
