"""Benchmark: model fit times on synthetic embeddings, and loading an embedding table into numpy.

    python bench/fit.py            # 10k x 1280 and 100k x 2048 (float32), as in the issue; fits capped at 1800 s
    python bench/fit.py --quick    # 2k x 256 and 10k x 512, fits capped at 20 s: about a minute
    python bench/fit.py --sizes 100000x2048 --models svm_rbf --max-seconds 14400 --skip-load   # one long fit

Every figure printed is measured; nothing is extrapolated into the table. Each fit runs in a child
process (data generated there, not timed; the time is ``model.fit`` alone) with a wall-clock cap,
``--max-seconds``: a fit still running at the cap is stopped and printed as ``> CAP s (stopped)`` —
a measured lower bound. For a stopped fit the script then measures the same model on growing
subsamples of the same shape (n/40, n/20, ... rows, doubling while the next fit is expected to end
within ``--scaling-seconds`` in all) and prints them on separate "scaling" lines with the fitted
exponent b of time ~ rows^b (least squares over the points, and between the last two), and the trend
to the full size — labelled as a trend, not a measurement.

The models are the registered ones as ``fit`` uses them by default (``create_model(name)``: low-variance
filter + scaling where the model uses it + the estimator); the "configuration" column says what that is:
logistic (lbfgs, float64 internally), svm_rbf (RBF SVC, Platt-calibrated on 3 subject-grouped folds:
3 SVC fits on 2/3 of the rows + 1 on all; above 20,000 rows Nystroem (1000 components) + LinearSVC
instead), xgboost (hist, n_estimators boosting rounds x 3 classes, all usable cores unless --device cuda)
and the CRMO ensemble (logistic on one half of the columns, svm_rbf
+ naive Bayes on the other, soft voting). The labels are 3 classes with a weak low-rank signal (see ``synthetic``).

Loading: the same 100k x 2048 (or --quick 10k x 512) FLOAT[d] table, written as the extraction runner
writes it (parts of 4096 rows), read (a) through DuckDB -> Arrow -> numpy (``store.featureset.load_matrix``:
one DuckDB thread gives one Arrow chunk whose values buffer is reshaped into the matrix, zero-copy),
(a') the same with all DuckDB threads (chunks joined: one copy) and (b) with pyarrow.parquet; best of 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("logistic", "svm_rbf", "xgboost", "ensemble")
CLASSES = 3


def synthetic(n: int, d: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n x d float32 features with a weak low-rank class signal, and string labels.

    The classes overlap as real embeddings' do (a logistic model gets about 72% of held-out rows right at
    10k x 1280): a separable signal let lbfgs stop after one iteration and the SVM keep few support
    vectors, which flattered both times."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, 16)).astype(np.float32)
    mixing = (rng.normal(size=(16, d)) / 100).astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += (centres[y] @ mixing).astype(np.float32)
    return X, np.array(["improved", "persisted", "regressed"])[y]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- the child: fits models on generated data and reports each as one JSON line ------------------------
def build_model(name: str, d: int, *, device: str, seed: int):
    """The model ``fit`` builds by default for ``name`` (the ensemble: the CRMO recipe over halves of X)."""
    from classifiers import create_model

    if name == "xgboost":
        return create_model("xgboost", device=device, random_state=seed)
    if name == "ensemble":
        half = d // 2
        members = [("logistic", create_model("logistic", random_state=seed), (0, half)),
                   ("svm_rbf", create_model("svm_rbf", random_state=seed), (half, d)),
                   ("naive_bayes", create_model("naive_bayes"), (half, d))]
        return create_model("ensemble", members=members)
    return create_model(name, random_state=seed)


def describe(name: str, model, d: int) -> str:
    """What was fitted, read from the fitted model: the configuration ``fit`` uses by default."""
    if name == "logistic":
        est = model.pipeline_[-1]
        return f"lbfgs, C={est.C}, max_iter={est.max_iter}, {int(np.max(est.n_iter_))} iterations; scaled"
    if name == "svm_rbf":
        calibrated = model.pipeline_[-1]
        svc = calibrated.calibrated_classifiers_[0].estimator
        folds = len(calibrated.cv) if hasattr(calibrated.cv, "__len__") else calibrated.cv
        if hasattr(svc, "nystroem_"):  # above approximate_above rows: Nystroem + linear SVM
            return (f"Nystroem rbf ({svc.nystroem_.n_components} components, gamma {svc.gamma_:.2e}) + LinearSVC "
                    f"C={svc.C}, Platt on {folds} grouped folds; above {model.approximate_above:,} rows (--exact: SVC)")
        return (f"SVC rbf C={svc.C} gamma={svc.gamma!r} cache {svc.cache_size:.0f} MB, Platt on {folds} grouped "
                f"folds ({folds} fits on {folds - 1}/{folds} of the rows + 1 on all); {int(svc.n_support_.sum())} SVs")
    if name == "xgboost":
        est = model.pipeline_[-1]
        config = json.loads(est.get_booster().save_config())
        threads = config["learner"]["generic_param"]["nthread"]
        rounds = est.get_booster().num_boosted_rounds()
        return (
            f"{rounds} rounds x {len(model.classes_)} classes = {rounds * len(model.classes_)} trees, "
            f"max_depth {est.max_depth}, lr {est.learning_rate}, {est.tree_method}, {threads} threads, {est.device}"
        )
    if name == "ensemble":
        parts = " + ".join(f"{m}[{a}:{b}]" for m, _, (a, b) in model.members)
        return f"{parts}, {model.voting} voting"
    return ""


def worker(d: int, jobs: list[tuple[str, int]], *, device: str, seed: int) -> int:
    """Fit each (model, rows) job on the first ``rows`` rows of synthetic(max rows, d); print JSON lines."""
    import warnings

    warnings.filterwarnings("ignore")
    n = max(rows for _, rows in jobs)
    X, y = synthetic(n, d, seed)
    warm = set()
    for name, rows in jobs:
        if name not in warm:  # a first small fit imports the backend and starts its threads: not timed
            warm.add(name)
            with contextlib.suppress(Exception):  # the timed fit below reports any real error
                build_model(name, d, device=device, seed=seed).fit(X[:90], y[:90])
        model = build_model(name, d, device=device, seed=seed)
        print(json.dumps({"event": "start", "model": name, "rows": rows}), flush=True)
        try:
            seconds = timed(lambda model=model, rows=rows: model.fit(X[:rows], y[:rows]))
        except Exception as exc:  # reported, and the next job goes on
            print(json.dumps({"event": "error", "model": name, "rows": rows,
                              "error": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
            continue
        print(json.dumps({"event": "done", "model": name, "rows": rows, "seconds": seconds,
                          "config": describe(name, model, d)}), flush=True)
    return 0


# --- the parent: runs workers with a wall-clock cap per fit ---------------------------------------------
@dataclass
class Result:
    model: str
    rows: int
    seconds: float | None = None  # measured fit time; None when stopped or failed
    stopped_at: float | None = None  # the cap, when the fit was stopped
    error: str | None = None
    config: str = ""


@dataclass
class _Series:
    """A series of fit jobs under way: what is left, what came out, and the seconds spent on it."""

    pending: list[tuple[str, int]]
    budget: float | None
    on_result: Callable[[Result], None] | None
    results: list[Result] = field(default_factory=list)
    spent: float = 0.0

    def record(self, result: Result, seconds: float) -> None:
        """Keep ``result`` (which took ``seconds`` of the budget) and show it."""
        self.spent += seconds
        self.results.append(result)
        if self.on_result:
            self.on_result(result)

    def cap_for_next(self, cap: float) -> float:
        """The wall-clock limit of the fit that starts now: ``cap``, or less when the budget runs out first."""
        return max(cap if self.budget is None else min(cap, self.budget - self.spent), 0.0)

    def over_budget(self) -> bool:
        """True when the next job is not expected to end within the budget: it is expected to take the
        last fit's time x (rows ratio)^b, b the exponent between the last two points (2 before two exist)."""
        if self.budget is None or not self.pending:
            return False
        times = [(r.rows, r.seconds) for r in self.results if r.seconds]
        exponent = 2.0
        if len(times) > 1 and times[-1][0] != times[-2][0]:
            exponent = math.log(times[-1][1] / times[-2][1]) / math.log(times[-1][0] / times[-2][0])
            exponent = max(exponent, 1.0)
        expected = times[-1][1] * (self.pending[0][1] / times[-1][0]) ** exponent if times else 0.0
        return self.spent + expected > self.budget


_TIMED_OUT = object()


class _LineReader:
    """Whole lines of a child's stdout, read with ``os.read`` (never a buffered readline: a line waiting in a
    reader's buffer would be invisible to select() and its fit would escape the cap)."""

    def __init__(self, stream):
        self.stream = stream
        self.select = selectors.DefaultSelector()
        self.select.register(stream, selectors.EVENT_READ)
        self.buffered, self.eof = b"", False

    def next_line(self, deadline: float | None):
        """The next line; ``_TIMED_OUT`` when the monotonic ``deadline`` passed first; None at the end of output."""
        while b"\n" not in self.buffered and not self.eof:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.select.select(timeout=wait):
                return _TIMED_OUT
            chunk = os.read(self.stream.fileno(), 65536)
            self.buffered += chunk
            self.eof = not chunk
        if b"\n" not in self.buffered:
            return None
        line, _, self.buffered = self.buffered.partition(b"\n")
        return line

    def close(self) -> None:
        self.select.close()
        self.stream.close()


def _event(line: bytes) -> dict | None:
    """One of the worker's JSON events, or None for something a library printed."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def run_jobs(d: int, jobs: list[tuple[str, int]], *, cap: float, device: str, seed: int,
             budget: float | None = None, after_stop: str = "continue", on_result=None) -> list[Result]:
    """Run ``jobs`` in child processes, each fit stopped at ``cap`` seconds (its child is killed).

    ``after_stop='continue'`` starts a fresh child for the jobs after a stopped or crashed one; 'end'
    ends there. ``budget`` (seconds, all jobs together) stops the series before a job that the times
    so far say cannot finish within what is left (``_Series.over_budget``)."""
    series = _Series(list(jobs), budget, on_result)
    while series.pending:
        command = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--_d", str(d), "--_jobs",
                   ",".join(f"{m}:{r}" for m, r in series.pending), "--device", device, "--_seed", str(seed)]
        ended_early = _run_child(command, series, cap)
        if ended_early and after_stop == "end":
            break
    return series.results


def _run_child(command: list[str], series: _Series, cap: float) -> bool:
    """One worker child over ``series.pending``; True when it ended early (a fit stopped at the cap, or a crash)."""
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe: a chatty child never blocks on it
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
        reader = _LineReader(child.stdout)
        try:
            return _follow(child, reader, errors, series, cap)
        finally:
            reader.close()


def _follow(child, reader: _LineReader, errors, series: _Series, cap: float) -> bool:
    """Record the child's fits as they end, stopping the one that passes its cap (see ``_run_child``)."""
    current, started, deadline = None, 0.0, None
    while True:
        line = reader.next_line(deadline)
        if line is _TIMED_OUT:  # the running fit passed its cap
            child.kill()
            child.wait()
            series.record(Result(current[0], current[1], stopped_at=deadline - started), deadline - started)
            series.pending = series.pending[series.pending.index(current) + 1:]
            return True
        if line is None:  # the child ended: all done, or it crashed (out of memory?)
            child.wait()
            return _child_ended(child, errors, series, current)
        event = _event(line)
        if event is None:
            continue
        job = (event["model"], event["rows"])
        if event["event"] == "start":
            current, started = job, time.monotonic()
            deadline = started + series.cap_for_next(cap)
            continue
        deadline = None
        series.record(Result(*job, seconds=event.get("seconds"), error=event.get("error"),
                             config=event.get("config", "")), event.get("seconds") or 0.0)
        series.pending = series.pending[1:]
        if series.over_budget():
            child.kill()
            child.wait()
            series.pending = []
            return False


def _child_ended(child, errors, series: _Series, current: tuple[str, int] | None) -> bool:
    """After the child's output ended: a crash during ``current`` is its result (True: ended early)."""
    errors.seek(0)
    lines = [line for line in errors.read().strip().splitlines() if line.strip()]
    last_error = lines[-1][:200] if lines else f"exit code {child.returncode}"
    if current is not None and series.pending and series.pending[0] == current:
        series.record(Result(current[0], current[1], error=f"child exited {child.returncode}: {last_error}"), 0.0)
        series.pending = series.pending[1:]
        return True
    if series.pending:
        raise RuntimeError(f"fit worker failed before its first fit: {last_error}")
    return False


def scaling_line(name: str, n: int, d: int, points: list[Result], sizes: list[int]) -> str:
    """'scaling' summary: measured subsample times, fitted exponent, and the trend to n rows (not measured)."""
    done = [(p.rows, p.seconds) for p in points if p.seconds]
    parts = [f"{r} rows {s:.1f} s" for r, s in done]
    parts += [f"{p.rows} rows > {p.stopped_at:.0f} s (stopped)" for p in points if p.stopped_at is not None]
    parts += [f"{p.rows} rows failed ({p.error})" for p in points if p.error]
    text = ", ".join(parts) or "no subsample finished"
    if len(points) < len(sizes) and not any(p.stopped_at is not None or p.error for p in points):
        text += f" (then stopped: {sizes[len(points)]} rows expected to pass the scaling budget)"
    if len(done) < 2:
        return f"scaling  {name:<9} {n} x {d}: {text}"
    rows, secs = np.log([r for r, _ in done]), np.log([s for _, s in done])
    fitted = float(np.polyfit(rows, secs, 1)[0])
    last = float((secs[-1] - secs[-2]) / (rows[-1] - rows[-2]))
    trend = done[-1][1] * (n / done[-1][0]) ** max(last, fitted)
    return (f"scaling  {name:<9} {n} x {d}: {text}; time ~ rows^{fitted:.2f} (least squares), ^{last:.2f} "
            f"(last two); trend to {n} rows with ^{max(last, fitted):.2f}: ~{trend:,.0f} s (not measured)")


def report_fit_size(
    n: int, d: int, models, *, cap: float, scaling_seconds: float, device: str, seed: int
) -> list[Result]:
    """Fit ``models`` on n x d (each capped), print each row; then the scaling series of stopped ones."""
    shape = f"{n} x {d}"

    def show(r: Result) -> None:
        if r.seconds is not None:
            figure, how = f"{r.seconds:.1f}", r.config
        elif r.stopped_at is not None:
            figure, how = f"> {r.stopped_at:.0f}", "(stopped at the cap; see scaling)"
        else:
            figure, how = "failed", r.error or ""
        print(f"{shape:<14} {r.model:<10} {figure:>9}  {how}", flush=True)

    results = run_jobs(d, [(m, n) for m in models], cap=cap, device=device, seed=seed, on_result=show)
    for r in results:
        if r.stopped_at is None:
            continue
        sizes = []
        m = max(n // 40, 100)
        while m < n:
            sizes.append(m)
            m *= 2
        points = run_jobs(d, [(r.model, m) for m in sizes], cap=min(cap, scaling_seconds), device=device, seed=seed,
                          budget=scaling_seconds, after_stop="end")
        print(scaling_line(r.model, n, d, points, sizes), flush=True)
    return results


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
            table = pa.concat_tables(
                [pq.read_table(p, columns=["scan_id", "embedding"]) for p in table_parts(store, "emb")]
            )
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


def _size(text: str) -> tuple[int, int]:
    rows, _, dims = text.lower().partition("x")
    return int(rows.replace("_", "").replace("k", "000")), int(dims)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k x 256 and 10k x 512, 20 s cap: about a minute")
    parser.add_argument("--sizes", default=None, help="comma-separated ROWSxDIMS (default 10000x1280,100000x2048)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="xgboost device")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="wall-clock cap per fit; a fit still running is stopped (default 1800, --quick 20)")
    parser.add_argument("--scaling-seconds", type=float, default=None,
                        help="seconds for the subsample series of each stopped fit (default 900, --quick 10)")
    parser.add_argument("--skip-fit", action="store_true", help="only the loading benchmark")
    parser.add_argument("--skip-load", action="store_true", help="only the fit benchmark")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_d", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_jobs", help=argparse.SUPPRESS)
    parser.add_argument("--_seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        jobs = [(m, int(r)) for m, r in (job.split(":") for job in args._jobs.split(","))]
        return worker(args._d, jobs, device=args.device, seed=args._seed)
    if args.sizes:
        sizes = [_size(s) for s in args.sizes.split(",")]
    else:
        sizes = [(2_000, 256), (10_000, 512)] if args.quick else [(10_000, 1280), (100_000, 2048)]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    cap = args.max_seconds if args.max_seconds is not None else (20.0 if args.quick else 1800.0)
    scaling = args.scaling_seconds if args.scaling_seconds is not None else (10.0 if args.quick else 900.0)
    from store.cores import usable_cores

    print(f"cpu cores: {os.cpu_count()} ({usable_cores()} usable); load average: "
          + " ".join(f"{v:.1f}" for v in os.getloadavg()) + f"; cap per fit {cap:.0f} s", flush=True)
    if not args.skip_fit:
        print(
            f"{'rows x dims':<14} {'model':<10} {'fit s':>9}  "
            f"configuration (fit's defaults, {CLASSES} classes, float32 X)"
        )
        for n, d in sizes:
            report_fit_size(n, d, models, cap=cap, scaling_seconds=scaling, device=args.device, seed=0)
        print("load average after the fits: " + " ".join(f"{v:.1f}" for v in os.getloadavg()), flush=True)
    if not args.skip_load:
        n, d = sizes[-1]
        load = load_row(n, d)
        print(
            f"load {n} x {d} FLOAT[{d}] ({load['megabytes']:.0f} MB, keys included), best of 3: "
            f"duckdb {load['duckdb']:.2f} s (1 thread, zero-copy), "
            f"duckdb {load['duckdb_threads']:.2f} s (all threads + "
            f"join chunks), pyarrow {load['pyarrow']:.2f} s; "
            f"ratio duckdb/pyarrow {load['duckdb'] / load['pyarrow']:.2f} "
            "(target <= 1.5)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
