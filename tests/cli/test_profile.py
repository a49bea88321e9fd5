"""`moegen profile`: the modeled report of a generated kernel as text, JSON, Perfetto trace and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moegen import cli

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "specs" / "tkg_seed_matrix.moe")
OUT = str(REPO / "generated")
KEYS = ("modeled_us", "roofline_fraction", "hbm_bytes", "hbm_min_bytes", "macs_issued", "macs_algorithmic")


def test_profile_json_perfetto_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trace_file, png = tmp_path / "t.json", tmp_path / "t.png"
    argv = ["profile", SPEC, "--variant", "selective", "--tokens", "2", "--out", OUT, "--json"]
    status = cli.main([*argv, "--perfetto", str(trace_file), "--plot", str(png)])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    for key in KEYS:
        assert report[key] > 0, key
    assert report["bound"] in report["engine_busy"] and "modeled" in report["label"]
    # the tkg selective kernel runs K = 2 experts per token: the MACs the math needs, from the plan
    assert report["macs_issued"] >= report["macs_algorithmic"]
    assert report["hbm_bytes"] >= report["hbm_min_bytes"]
    assert len(report["stalls"]) <= 5 and all("waits_on" in s and ".py:" in s["line"] for s in report["stalls"])
    events = json.loads(trace_file.read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"tensor engine", "vector engine"} <= tracks and any("DMA queue" in t for t in tracks)
    assert any(e["ph"] == "X" and "selective.py:" in e["name"] for e in events)
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # not a blank canvas


def test_profile_text_on_trn3_and_errors(capsys):
    status = cli.main(["profile", SPEC, "--variant", "no_such_kernel", "--out", OUT])
    assert status != 0 and "no kernel named 'no_such_kernel'" in capsys.readouterr().err
    status = cli.main(["profile", SPEC, "--out", OUT, "--perfetto", "x.json"])
    assert status != 0 and "--perfetto / --plot need one kernel" in capsys.readouterr().err
    status = cli.main(["profile", SPEC, "--variant", "selective", "--tokens", "1", "--out", OUT, "--target", "trn3"])
    out = capsys.readouterr().out
    assert status == 0 and "target trn3" in out and "modeled time" in out and "roofline fraction" in out
