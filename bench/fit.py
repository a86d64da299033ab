"""Benchmark: model fit times on synthetic embeddings, and loading an embedding table into numpy.

    python bench/fit.py            # 10k x 1280 and 100k x 2048 (float32), as in the issue
    python bench/fit.py --quick    # 2k x 256 and 10k x 512: a minute on a laptop

Fit times are for the registered models as ``fit`` uses them (VarianceThreshold + scaling + model):
logistic, svm_rbf (Platt-calibrated RBF SVM), xgboost (hist, CPU unless --device cuda) and the CRMO
ensemble (logistic on one half of the columns, svm_rbf + naive Bayes on the other, soft voting).
An RBF SVM's fit grows roughly with n^2: when a size would exceed --svm-budget seconds it is measured
on growing subsamples until the budget is reached and the full size is extrapolated from the last two
(marked 'est.'); the ensemble at that size is then the measured logistic + naive Bayes plus that estimate.
XGBoost is first fitted with 10 trees; when 200 would exceed --xgb-budget seconds it is extrapolated per tree.

Loading: the same 100k x 2048 (or --quick 10k x 512) FLOAT[d] table, written as the extraction runner
writes it (parts of 4096 rows), read (a) through DuckDB -> Arrow -> numpy (``store.featureset.load_matrix``:
one DuckDB thread gives one Arrow chunk whose values buffer is reshaped into the matrix, zero-copy),
(a') the same with all DuckDB threads (chunks joined: one copy) and (b) with pyarrow.parquet; best of 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifiers import create_model  # noqa: E402


def synthetic(n: int, d: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n x d float32 features with a low-rank class signal, and string labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, 16)).astype(np.float32)
    mixing = (rng.normal(size=(16, d)) / 4).astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += (centres[y] @ mixing).astype(np.float32)
    return X, np.array(["improved", "persisted", "regressed"])[y]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def svm_time(X, y, budget: float, seed: int) -> tuple[float, str]:
    """Seconds to fit svm_rbf on all rows, measured or extrapolated from subsamples within ``budget``."""
    n = len(y)
    rng = np.random.default_rng(seed)
    sizes, times = [], []
    m = min(n, 1000)
    while True:
        rows = rng.choice(n, m, replace=False) if m < n else np.arange(n)
        seconds = timed(lambda: create_model("svm_rbf", random_state=seed).fit(X[rows], y[rows]))
        sizes.append(m)
        times.append(seconds)
        if m == n:
            return seconds, "measured"
        # predict the next doubling from the growth seen so far; stop before it breaks the budget
        exponent = np.log(times[-1] / times[-2]) / np.log(sizes[-1] / sizes[-2]) if len(times) > 1 else 2.0
        exponent = float(np.clip(exponent, 1.0, 3.0))
        nxt = min(n, 2 * m)
        if sum(times) + seconds * (nxt / m) ** exponent > budget:
            estimate = seconds * (n / m) ** exponent
            return estimate, f"est. from {m} rows ({seconds:.1f} s), n^{exponent:.2f}"
        m = nxt


def xgb_time(X, y, budget: float, device: str, seed: int) -> tuple[float, str]:
    """Seconds to fit the default xgboost (200 trees), measured, or extrapolated per tree from a 10-tree fit
    when the full fit would exceed ``budget`` (boosting time grows about linearly with the trees)."""
    full = create_model("xgboost", device=device, random_state=seed).n_estimators
    probe = timed(lambda: create_model("xgboost", device=device, random_state=seed, n_estimators=10).fit(X, y))
    if probe * full / 10 > budget:
        return probe * full / 10, f"est. from 10 trees ({probe:.1f} s) x {full // 10}, device {device}"
    return timed(lambda: create_model("xgboost", device=device, random_state=seed).fit(X, y)), f"measured, device {device}"


def fit_row(n: int, d: int, *, device: str, svm_budget: float, xgb_budget: float, seed: int = 0):
    """Yield (model, seconds, how) for logistic, svm_rbf, xgboost and the ensemble on n x d features."""
    X, y = synthetic(n, d, seed)
    half = d // 2
    yield "logistic", timed(lambda: create_model("logistic", random_state=seed).fit(X, y)), "measured"
    svm, how = svm_time(X, y, svm_budget, seed)
    yield "svm_rbf", svm, how
    yield ("xgboost", *xgb_time(X, y, xgb_budget, device, seed))
    members = [("logistic", create_model("logistic", random_state=seed), (0, half)),
               ("svm_rbf", create_model("svm_rbf", random_state=seed), (half, d)),
               ("naive_bayes", create_model("naive_bayes"), (half, d))]
    if how == "measured":
        yield "ensemble", timed(lambda: create_model("ensemble", members=members).fit(X, y)), "measured"
    else:
        part_logistic = timed(lambda: create_model("logistic", random_state=seed).fit(X[:, :half], y))
        part_nb = timed(lambda: create_model("naive_bayes").fit(X[:, half:], y))
        part_svm, part_how = svm_time(X[:, half:], y, svm_budget, seed)
        yield ("ensemble", part_logistic + part_nb + part_svm,
               f"logistic {part_logistic:.1f} s + naive_bayes {part_nb:.1f} s measured, svm_rbf {part_how}")


def load_row(n: int, d: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds to load an n x d FLOAT[d] table into one float32 matrix (with its keys):
    ``duckdb`` (load_matrix, one DuckDB thread: one Arrow chunk, zero-copy reshape), ``duckdb_threads``
    (all cores: parallel decode, chunks joined by one copy) and ``pyarrow`` (pyarrow.parquet, threads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.sets import column_to_matrix
    from store.featureset import load_matrix
    from store.layout import open_store
    from store.provenance import part_metadata
    from store.tables import table_parts, write_part

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        rng = np.random.default_rng(0)
        meta = part_metadata(producer="bench", params={"d": d}, extra={"dataset": "bench"})
        for start in range(0, n, 4096):  # the extraction runner's part size
            m = min(4096, n - start)
            values = rng.standard_normal(m * d, dtype=np.float32)
            table = pa.table({
                "scan_id": pa.array([f"{i:032x}" for i in range(start, start + m)]),
                "source_sha256": pa.array(["0" * 64] * m),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values), d),
            })
            write_part(store, "emb", table, metadata=meta)

        def _check_loaded(matrix, keys, n, d):
            if matrix.shape != (n, d) or len(keys) != n:
                raise RuntimeError(f"loaded {matrix.shape} / {len(keys)} keys, expected ({n}, {d})")

        def by_duckdb(threads):
            def run():
                keys, matrix, _ = load_matrix(store, "emb", "scan_id", ["embedding"], threads=threads)
                _check_loaded(matrix, keys, n, d)
            return run

        def by_pyarrow():
            table = pa.concat_tables([pq.read_table(p, columns=["scan_id", "embedding"]) for p in table_parts(store, "emb")])
            matrix = column_to_matrix(table.column("embedding"))
            keys = table.column("scan_id").to_numpy(zero_copy_only=False)
            _check_loaded(matrix, keys, n, d)

        runs = {"duckdb": by_duckdb(1), "duckdb_threads": by_duckdb(None), "pyarrow": by_pyarrow}
        best = {name: float("inf") for name in runs}
        for _ in range(repeats):  # interleaved, so a busy moment does not favour one reader
            for name, run in runs.items():
                best[name] = min(best[name], timed(run))
    best["megabytes"] = n * d * 4 / 1e6
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k x 256 and 10k x 512 instead of 10k x 1280 and 100k x 2048")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="xgboost device")
    parser.add_argument("--svm-budget", type=float, default=120.0, help="seconds svm_rbf may spend per size before extrapolating")
    parser.add_argument("--xgb-budget", type=float, default=600.0, help="seconds xgboost may take before it is extrapolated")
    parser.add_argument("--skip-fit", action="store_true", help="only the loading benchmark")
    args = parser.parse_args(argv)
    sizes = [(2_000, 256), (10_000, 512)] if args.quick else [(10_000, 1280), (100_000, 2048)]
    print(f"cpu cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")
    if not args.skip_fit:
        print(f"{'rows x dims':<14} {'model':<10} {'fit s':>9}  how")
        for n, d in sizes:
            for name, seconds, how in fit_row(n, d, device=args.device, svm_budget=args.svm_budget,
                                               xgb_budget=args.xgb_budget):
                print(f"{f'{n} x {d}':<14} {name:<10} {seconds:>9.1f}  {how}", flush=True)
    n, d = sizes[-1]
    load = load_row(n, d)
    print(f"load {n} x {d} FLOAT[{d}] ({load['megabytes']:.0f} MB, keys included), best of 3: "
          f"duckdb {load['duckdb']:.2f} s (1 thread, zero-copy), duckdb {load['duckdb_threads']:.2f} s (all threads + "
          f"join chunks), pyarrow {load['pyarrow']:.2f} s; ratio duckdb/pyarrow {load['duckdb'] / load['pyarrow']:.2f} "
          "(target <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
