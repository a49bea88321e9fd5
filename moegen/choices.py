"""Plan choices made by the timeline model, recorded beside the spec in `SPEC.choices.json`.

A kernel marked `tuned` takes the options it leaves at `auto` (tkg: mode, shard, gate_up_loop, gate_up_split,
weight_buffers, down_columns; cte: shard, block, loop, weights, tail, weight_buffers, gate_up_tiles,
down_columns) from the record `moegen tune SPEC
--write` made by modeling the legal candidates (moegen/tune.py). A build only reads the record: it never simulates, so `moegen build` / `moegen check`
stay as fast as before, and the output depends only on the spec and the checked-in record (same bytes
every time). Each record carries a fingerprint of what the choice depends on (the layer, the kernel's
family and options); a tuned kernel whose record is missing or whose fingerprint differs fails to
plan, naming the command that refreshes it, so `moegen check` fails too.

File format (sorted keys, deterministic): {"kernels": {NAME: {"fingerprint", "tokens", "target",
"chosen": {option: value}, "table": [{"options", "label" (cte: what the plan resolved), "modeled_us",
"per_tokens": [{"tokens", "modeled_us", "roofline", "bound", ...}]}, fastest first]}}}.
Every time in it is **modeled** (moegen.perf), not measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from moegen.spec.model import Layer, Variant

SUFFIX = ".choices.json"
NOT_FINGERPRINTED = ("tuned", "verify_tokens")  # options that do not change what the model compares


def choices_path(spec_path: str | Path) -> Path:
    """specs/x.moe -> specs/x.choices.json."""
    path = Path(spec_path)
    return path.with_name(path.stem + SUFFIX)


def _canonical(value):
    """Plain data for hashing: dataclasses as field dicts without their source spans."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Unset fields (None, False, 0, empty) are left out, so a field added later with such a default keeps
        # the fingerprints of existing records; where the spec was read from does not matter.
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.endswith("span")
            and f.name != "path"
            and getattr(value, f.name) not in (None, False, 0, "", (), {})
        }
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def fingerprint(layer: Layer, variant: Variant) -> str:
    """What a recorded choice depends on: the layer and the kernel's family and spec options."""
    from moegen.plan import families  # here: moegen.plan imports the compiler's modules

    defaults = {option.name: option.default for option in families()[variant.family].options}
    # An option at its family's default is left out, so an option added later keeps existing records valid.
    options = {
        k: v
        for k, v in variant.options.items()
        if k not in NOT_FINGERPRINTED and v not in (None, False) and (k not in defaults or v != defaults[k])
    }
    data = {"layer": _canonical(layer), "family": variant.family, "options": _canonical(options)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load(spec_path: str | Path) -> dict:
    """The record of a spec ({} when there is none)."""
    path = choices_path(spec_path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def dump(record: dict) -> str:
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


class StaleChoice(Exception):
    """A tuned kernel without a fresh recorded choice."""


def resolve(spec_path: str | Path, layer: Layer, variant: Variant) -> tuple[Variant, tuple[str, str] | None]:
    """The variant with its recorded choices applied, and the decision line for `moegen explain`
    (chosen and runner-up, modeled). Untuned variants come back unchanged. Raises StaleChoice."""
    if not variant.options.get("tuned"):
        return variant, None
    entry = load(spec_path).get("kernels", {}).get(variant.name)
    command = f"run 'moegen tune {spec_path} --variant {variant.name} --write'"
    if entry is None:
        raise StaleChoice(f"tuned, but {choices_path(spec_path).name} has no choice for it: {command}")
    if entry.get("fingerprint") != fingerprint(layer, variant):
        raise StaleChoice(
            f"tuned, but its recorded choice in {choices_path(spec_path).name} was made for another "
            f"layer or other options (stale): {command}"
        )
    chosen = entry["chosen"]
    options = dict(variant.options)
    options.update(chosen)
    table = entry.get("table", [])
    spelled = " ".join(f"{k}={v}" for k, v in sorted(chosen.items())) or "(the rule's values)"
    if table and table[0].get("label"):  # cte: the whole plan the choice resolves to
        spelled = table[0]["label"]
    at = "T=" + " + ".join(str(t) for t in entry["tokens"])
    why = f"{spelled}: {table[0]['modeled_us']:.1f} us modeled at {at} ({entry['target']})" if table else spelled
    if len(table) > 1:
        other = table[1].get("label") or " ".join(f"{k}={v}" for k, v in sorted(table[1]["options"].items()))
        why += f"; runner-up {other}: {table[1]['modeled_us']:.1f} us"
    why += f"; {len(table)} candidates in {choices_path(spec_path).name} (moegen tune --write)"
    return dataclasses.replace(variant, options=options), ("model's choice", why)
