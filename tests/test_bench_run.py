"""bench/run.py's machinery (not its timings): rows, tables, peak memory, the benchmarks table, the GPU sweep's
code path on the CPU, and one real run of its two cheapest stages through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench._common import PeakRSS, bench_row, format_table, machine_details
from bench.run import QUICK, Context, _decode_row, run_stage_here, stage_cnn_gpu
from features.errors import InputError
from store.benchmarks import BENCHMARKS, append_benchmarks, read_benchmarks
from store.sql import query

REPO = Path(__file__).resolve().parent.parent


def test_rows_compute_rates_and_ratio_and_tables_align():
    row = bench_row("diffstats", "absolute, 1 worker(s)", items=100, unit="pairs", seconds=4.0,
                    baseline="bare loop", baseline_seconds=1.0, size="100 pairs")
    assert row["items_per_s"] == 25.0 and row["baseline_items_per_s"] == 100.0 and row["ratio"] == 0.25
    missing = bench_row("cnn_gpu", "-", items=0, unit="images", seconds=None, status="unavailable: no GPU")
    assert missing["items_per_s"] is None and missing["ratio"] is None
    text = format_table([row, missing], [("stage", "stage", ""), ("items_per_s", "items/s", ".1f"),
                                          ("ratio", "ratio", ".2f"), ("status", "status", "")])
    header, rule, first, second = text.splitlines()
    assert header.split() == ["stage", "items/s", "ratio", "status"] and set(rule.replace(" ", "")) == {"-"}
    assert first.split() == ["diffstats", "25.0", "0.25", "ok"]
    assert second.split()[:3] == ["cnn_gpu", "-", "-"] and second.endswith("unavailable: no GPU")
    assert first.index("25.0") + len("25.0") == header.index("items/s") + len("items/s")  # numbers right-aligned


def test_peak_rss_sees_this_process_and_its_children():
    with PeakRSS() as small:
        pass
    with PeakRSS() as big:
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        del block
    assert big.process_mb - small.process_mb > 250
    child = "import numpy as np, time; a = np.ones(400 * 2**20 // 8); time.sleep(1.5)"
    with PeakRSS(interval=0.05) as tree:
        subprocess.run([sys.executable, "-c", child], check=True)
    assert tree.tree_mb - tree.process_mb > 350  # the child's memory is seen, this process's is not inflated
    assert tree.process_mb < small.process_mb + 100


def test_benchmarks_table_accumulates_runs_queryable_with_sql(tmp_store):
    machine = machine_details()
    assert machine["cpu_cores"] >= 1 and machine["cpu_model"] and "numpy" in machine["packages"]
    rows = [bench_row("fit", "logistic", items=10, unit="rows", seconds=1.0, baseline="bare", baseline_seconds=0.5),
            bench_row("cnn_gpu", "-", items=0, unit="images", seconds=None, status="unavailable: no GPU")]
    first = append_benchmarks(tmp_store, rows, machine=machine, quick=True)
    second = append_benchmarks(tmp_store, rows[:1], machine={**machine, "cpu_model": "Other CPU"}, quick=False)
    table = read_benchmarks(tmp_store)
    assert table.schema == BENCHMARKS and table.num_rows == 3 and first != second
    found = query(
        tmp_store, "SELECT cpu_model, quick, ratio FROM benchmarks WHERE stage = 'fit' ORDER BY quick"
    ).to_pylist()
    assert found == [{"cpu_model": "Other CPU", "quick": False, "ratio": 0.5},
                     {"cpu_model": machine["cpu_model"], "quick": True, "ratio": 0.5}]
    packages = query(tmp_store, "SELECT packages FROM benchmarks LIMIT 1").column(0)[0].as_py()
    assert json.loads(packages)["numpy"] == np.__version__
    with pytest.raises(InputError):
        append_benchmarks(tmp_store, [], machine=machine, quick=True)


def test_a_failing_stage_becomes_an_unavailable_row(tmp_path, monkeypatch):
    import bench.run as run

    def broken(ctx):
        raise ImportError("extractors.cnn is being rewritten")

    monkeypatch.setitem(run.STAGE_FUNCTIONS, "cnn", broken)
    rows = run_stage_here("cnn", Context(QUICK, True, tmp_path))
    assert len(rows) == 1 and rows[0]["status"] == "unavailable: ImportError: extractors.cnn is being rewritten"


def test_gpu_sweep_code_path_runs_on_the_cpu(tmp_path):
    rows = stage_cnn_gpu(Context(QUICK, True, tmp_path), device="cpu", models=("test_efficientnet",),
                         batch_sizes=(4,), images=8, precision="fp32")
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == "ok" and row["items"] == 8 and row["items_per_s"] > 0 and row["baseline_items_per_s"] > 0
    assert row["bound"] in ("decode", "forward") and "decode alone" in row["notes"]


def test_decode_row_compares_decode_and_preprocess_with_a_bare_pydicom_loop(tmp_path):
    row = _decode_row(Context(QUICK, True, tmp_path).store("cnn"), "test_efficientnet", 8, 4)
    assert row["stage"] == "cnn" and row["variant"].startswith("decode") and row["items"] == 8
    assert row["items_per_s"] > 0 and row["baseline_items_per_s"] > 0 and "pydicom" in row["baseline"]
    assert row["ratio"] == pytest.approx(row["items_per_s"] / row["baseline_items_per_s"])


def test_command_line_runs_stages_prints_the_table_and_records_rows(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--stages", "store_load,cnn_gpu",
         "--store", str(tmp_path / "store"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "items/s" in done.stdout and "base items/s" in done.stdout and "store_load" in done.stdout
    import torch

    if not torch.cuda.is_available():
        assert "GPU sweep: no GPU" in done.stdout
    from store.layout import open_store

    table = read_benchmarks(open_store(tmp_path / "store")).to_pylist()
    load = [r for r in table if r["stage"] == "store_load"]
    assert len(load) == 2 and all(r["status"] == "ok" and r["items_per_s"] > 0 and r["ratio"] > 0 for r in load)
    assert all(r["items"] == QUICK.load_shape[0] and r["cpu_model"] and r["quick"] for r in load)
    assert {r["stage"] for r in table} == {"store_load", "cnn_gpu"}
    assert len(json.loads(out.read_text())["rows"]) == len(table)
