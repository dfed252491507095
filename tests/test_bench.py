"""Smoke tests of ``byol bench`` and of benchmarks/throughput.py (tiny sizes, no timing claims)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from byol.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"
HAVE_PEERS = all(importlib.util.find_spec(m) is not None for m in ("lightly", "byol_pytorch"))

# One torch thread: on shared, busy cores the default (all cores) is many times slower.
TINY_BENCH = [
    "bench", "--arch", "resnet18", "--width", "8", "--small-stem", "--image-size", "16",
    "--batch", "8", "--steps", "2", "--warmup", "1", "--device", "cpu",
    "--set", "train.threads=1",
]


def _table(markdown: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(library, mode, setup) -> (precision and memory format, images/s) cells of the report."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 7 or cells[0] == "library":
            continue
        rows[(cells[0], cells[1], cells[2])] = (cells[3], cells[4])
    return rows


@pytest.fixture(scope="module")
def throughput(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("throughput")
    cmd = [
        sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--threads", "1",
        "--peers", "lightly,byol-pytorch" if HAVE_PEERS else "",
        "--markdown", str(tmp / "bench.md"), "--json", str(tmp / "bench.json"),
        "--out", str(tmp / "runs"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout, (tmp / "bench.md").read_text(), json.loads((tmp / "bench.json").read_text())


def _positive(cell: str) -> bool:
    return float(cell.replace(",", "")) > 0


def test_throughput_reports_ours(throughput):
    stdout, markdown, data = throughput
    assert stdout == markdown
    assert "- command: `python benchmarks/throughput.py --tiny" in markdown
    assert "- machine: " in markdown and "- date: " in markdown
    table = _table(markdown)
    for mode in ("augment", "data"):
        assert _positive(table[("byol (ours)", mode, "defaults")][1])
    rows = {(r["library"], r["mode"]): r for r in data["rows"]}
    ours = rows[("byol (ours)", "augment")]
    assert ours["images_per_s"] > 0 and ours["batch"] == 8 and ours["width"] == 8
    assert ours["ratio_ours_augment"] == pytest.approx(1.0)
    assert data["machine"]["cores"] >= 1


def test_throughput_reports_peers(throughput):
    pytest.importorskip("lightly")
    pytest.importorskip("byol_pytorch")
    _, markdown, data = throughput
    table = _table(markdown)
    ours = {(r["library"], r["mode"]): r for r in data["rows"]}[("byol (ours)", "augment")]
    ours_fmt = f"{ours['precision']}, {'channels_last' if ours['channels_last'] else 'NCHW'}"
    rows = {(r["library"], r["mode"], r["setup"]): r for r in data["rows"]}
    for lib, mode in (("lightly", "data"), ("byol-pytorch", "augment")):
        # as documented: float32 in the default memory format; matched: exactly ours
        assert table[(lib, mode, "documented")][0] == "fp32, NCHW"
        assert table[(lib, mode, "matched")][0] == ours_fmt
        for setup in ("documented", "matched"):
            assert _positive(table[(lib, mode, setup)][1])
            row = rows[(lib, mode, setup)]
            assert row["error"] is None and row["images_per_s"] > 0 and row["peak_mem_gib"] > 0
            assert (row["arch"], row["width"], row["image_size"], row["batch"]) == (
                "resnet18", 8, 16, 8)
            assert row["ratio_ours_augment"] > 0


def test_byol_bench_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    assert main([*TINY_BENCH, "--out", str(tmp_path / "run"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "augment" and res["batch"] == 8 and res["steps"] == 2
    assert res["images_per_s"] > 0 and res["seconds"] > 0


def test_byol_bench_names_a_wide_last_stage(tmp_path, capsys):
    from byol.bench import BenchResult

    out = tmp_path / "bench.json"
    args = [*TINY_BENCH, "--out", str(tmp_path / "run"), "--json", str(out),
            "--set", "model.last_stage_width=96"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["last_stage_width"] == 96
    assert "| resnet18 w8 last96 |" in BenchResult(**res).row()
    res["last_stage_width"] = 0
    assert "| resnet18 w8 |" in BenchResult(**res).row()


def test_byol_bench_repeat_reports_the_median_of_its_blocks(tmp_path, capsys):
    from byol.bench import BenchResult

    out = tmp_path / "bench.json"
    assert main([*TINY_BENCH, "--repeat", "3", "--out", str(tmp_path / "run"),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rates = res["repeats"]
    assert len(rates) == 3 and all(r > 0 for r in rates)
    assert res["steps"] == 6  # 3 blocks of --steps 2
    assert res["images_per_s"] == sorted(rates)[1]  # the median block
    # the total time is the blocks' sum: 6 steps of batch 8 at their own rates
    assert res["seconds"] == pytest.approx(sum(2 * 8 / r for r in rates))
    row = capsys.readouterr().out
    assert f"{sorted(rates)[0]:,.0f}-{sorted(rates)[2]:,.0f}, 3x)" in row
    # one block (the default) prints the rate alone
    res.update(repeats=[rates[0]], images_per_s=rates[0])
    assert f"| {rates[0]:,.0f} |" in BenchResult(**res).row()
    with pytest.raises(SystemExit, match="--repeat"):
        main([*TINY_BENCH, "--repeat", "0", "--out", str(tmp_path / "run2")])
