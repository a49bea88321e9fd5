"""docs/nkilib.md covers every argument and config field of the AWS-signature entry points."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from moegen import nkilib

DOC = Path(__file__).resolve().parents[1] / "docs" / "nkilib.md"


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "lnc"]


@pytest.mark.parametrize("entry", ["router_topk", "moe_tkg", "moe_cte"])
def test_every_argument_is_in_the_mapping_doc(entry):
    """Output buffers and the tensors every variant reads are named in the section's text; every flag
    is in a table row."""
    text = DOC.read_text()
    section = text.split(f"## `{entry}`")[1].split("\n## ")[0]
    function = getattr(nkilib, entry)
    function = getattr(function, "function", function)  # moe_cte is launched as moe_cte[lnc]
    missing = [name for name in _parameters(function) if name not in section]
    assert not missing, f"{entry}: {missing} not in docs/nkilib.md"


@pytest.mark.parametrize("config", ["ShardOnBlockConfig", "ShardOnIConfig", "SkipMode", "QuantizationConfig"])
def test_every_config_field_is_in_the_mapping_doc(config):
    section = DOC.read_text().split("## `moe_cte`")[1]
    missing = [field.name for field in dataclasses.fields(getattr(nkilib, config)) if field.name not in section]
    assert not missing, f"{config}: {missing} not in docs/nkilib.md"
