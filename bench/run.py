"""Every benchmark of chronofeat in one command: one table of figures, each against its bare-library baseline.

    python bench/run.py --quick        # a few minutes on 2 cores (CI-sized data)
    python bench/run.py                # the full sizes (about 10 minutes on 2 cores, no GPU)
    python bench/run.py --stages cnn,fit --store /data/featurestore
    python bench/run.py --profile diffstats   # + cProfile's top functions of that stage (one worker)

Stages (each in its own process, so its peak memory is its own; a stage that cannot run is reported
as 'unavailable: reason' and the others go on):

=========== ================================================ =============================================
stage       ours (end to end, what a user runs)              baseline (bare library, same run, same data)
=========== ================================================ =============================================
ingest      store.ingest.ingest_dataset of 512x512 DICOM      pydicom.dcmread(f).pixel_array loop
cnn         run_extraction(CNNEmbedding) from DICOM on disk  timm model forward on in-memory tensors
bovw        run_extraction(BoVW sift, 50 words)              OpenCV SIFT detectAndCompute loop (in memory)
diffstats   run_extraction(DiffStats absolute)               phase_cross_correlation + numpy stats loop
store_load  store.featureset.load_matrix (DuckDB -> numpy)   pyarrow.parquet read -> numpy
fit         classifiers.create_model(name).fit               the same scikit-learn / XGBoost estimator
cnn_gpu     CUDA sweep (only when torch.cuda.is_available()): models x batch sizes, bf16, channels_last,
            several decode workers, optional torch.compile, against the bare forward on the same GPU,
            and which stage (decode or forward) bounds the pipeline
=========== ================================================ =============================================

Data is generated for the run (sizes printed with every row) in a temporary folder and removed at the
end. CNN weights are random (timm's initialisation): the same arithmetic as pretrained weights, and
no download. The ratio is ours / baseline in items per second: 1.0 means as fast as the bare loop.

Results are printed and appended to the ``benchmarks`` table of the store (``--store``, else
$CHRONOFEAT_STORE, else ./featurestore — the same store the CLI uses, so figures from every machine
and run accumulate and compare with SQL; ``--no-record`` writes nothing), with the machine's CPU
model, cores, memory, GPU and library versions:

    python cli.py sql "SELECT cpu_model, stage, variant, items_per_s, ratio FROM benchmarks ORDER BY recorded_at"
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    PeakRSS,
    bench_row,
    format_table,
    machine_details,
    rounds,
    timed,
)
from store.cores import usable_cores  # noqa: E402

STAGES = ("ingest", "cnn", "bovw", "diffstats", "store_load", "fit", "cnn_gpu")
DATASET = "bench"
TABLE_COLUMNS = [
    ("stage", "stage", ""),
    ("variant", "variant", ""),
    ("size", "data", ""),
    ("items_per_s", "items/s", ".1f"),
    ("baseline", "baseline", ""),
    ("baseline_items_per_s", "base items/s", ".1f"),
    ("ratio", "ratio", ".2f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("peak_tree_rss_mb", "+workers MB", ".0f"),
    ("status", "status", ""),
]
GPU_COLUMNS = [
    ("variant", "model / batch / workers", ""),
    ("items_per_s", "end-to-end img/s", ".0f"),
    ("baseline_items_per_s", "bare forward img/s", ".0f"),
    ("ratio", "ratio", ".2f"),
    ("bound", "bound by", ""),
    ("notes", "notes", ""),
]


@dataclass(frozen=True)
class Sizes:
    """How much data each stage gets (``--quick`` or full)."""

    ingest_files: int
    patients: int  # generated longitudinal dataset for cnn / bovw / diffstats: patients x visits images
    visits: int
    image_size: int
    cnn_models: tuple[str, ...]
    cnn_images: int  # the first N scans of the generated dataset
    load_shape: tuple[int, int]
    fit_shape: tuple[int, int]
    fit_trees: int  # xgboost n_estimators
    repeats: int
    gpu_images: int
    gpu_batches: tuple[int, ...]

    @property
    def images(self) -> int:
        return self.patients * self.visits


QUICK = Sizes(ingest_files=300, patients=8, visits=4, image_size=512, cnn_models=("efficientnet_b0",), cnn_images=32,
              load_shape=(10_000, 512), fit_shape=(2_000, 256), fit_trees=20, repeats=1, gpu_images=512,
              gpu_batches=(64, 256))
FULL = Sizes(ingest_files=2_000, patients=24, visits=5, image_size=512,
             cnn_models=("efficientnet_b0", "inception_v3", "convnext_tiny"), cnn_images=64,
             load_shape=(100_000, 2048), fit_shape=(10_000, 1280), fit_trees=50, repeats=2, gpu_images=2048,
             gpu_batches=(32, 64, 128, 256))


# --- generated data ----------------------------------------------------------------------------------
def generate_longitudinal(folder: Path, *, patients: int, visits: int, size: int, seed: int = 0,
                          distinct: int = 24) -> int:
    """Write ``patients`` x ``visits`` 16-bit CT-like DICOM slices (``size`` x ``size``) into ``folder``.

    Each patient's anatomy is a photograph (scikit-image samples, cropped, rotated: real edges and
    texture, so keypoints, registration and CNN inputs behave as on images), at most ``distinct``
    different ones reused with flips for more patients. Each weekly visit moves it by a few pixels,
    adds noise and, for every other patient, a growing bright lesion. Returns the number of files.
    """
    from scipy import ndimage

    from bench._common import write_ct_slice
    from bench.bovw import test_images

    rng = np.random.default_rng(seed)
    bases = test_images(min(patients, distinct), size, seed=seed)
    count = 0
    for p in range(patients):
        base = bases[p % len(bases)]
        base = np.flip(base, axis=(p // len(bases)) % 2) if p >= len(bases) else base
        for v in range(visits):
            image = ndimage.shift(base, rng.integers(-6, 7, size=2), order=1, mode="nearest") if v else base.copy()
            if p % 2 and v:
                yy, xx = np.ogrid[:size, :size]
                image = image + 80.0 * v * (((yy - size * 0.4) ** 2 + (xx - size * 0.55) ** 2) < (size * 0.03 * v) ** 2)
            image = image + rng.normal(0, 2.0, image.shape)
            pixels = np.clip(image * 8.0, 0, 4095).astype(np.uint16)  # stored values; HU = stored - 1024
            write_ct_slice(folder / f"p{p:04d}" / f"visit{v}.dcm", pixels, patient=f"BENCH{p:04d}",
                           patient_name=f"Bench^{p}", study_date=f"2024{1 + (v * 7) // 28:02d}{1 + (v * 7) % 28:02d}",
                           instance=1, window=(0, 2000))
            count += 1
    return count


def build_base_store(scratch: Path, name: str, *, patients: int, visits: int, size: int) -> Path:
    """Generate the longitudinal dataset ``name`` under ``scratch`` and ingest it into a base store; its root."""
    from store.ingest import ingest_dataset
    from store.layout import open_store

    folder = scratch / f"{name}-dicom"
    generate_longitudinal(folder, patients=patients, visits=visits, size=size)
    root = scratch / f"{name}-store"
    summary = ingest_dataset(open_store(root), DATASET, root=folder, layout="generic", workers=1, progress=False)
    if summary.failed:
        raise RuntimeError(f"bench dataset ingest failed: {summary.summary_line()}")
    return root


def fresh_store(base: Path, dest: Path):
    """A new store at ``dest`` holding ``base``'s core tables and secret (pixels stay in the shared folder)."""
    from store.layout import open_store

    copy = open_store(dest)
    for table in ("scans", "pairs", "datasets"):
        source = base / "tables" / table
        if source.is_dir():
            shutil.copytree(source, copy.tables_dir / table, ignore=shutil.ignore_patterns(".lock", ".tmp-*"))
    if (base / "secret").exists():
        shutil.copy2(base / "secret", copy.secret_path)
    return copy


@dataclass
class Context:
    """What a stage needs: sizes, scratch folder, base stores, options."""

    sizes: Sizes
    quick: bool
    scratch: Path
    profile: bool = False
    compile: bool = False

    def base(self) -> Path:
        root = self.scratch / "base-store"
        if not root.is_dir():  # the parent builds it once; a stage run alone builds its own
            build_base_store(self.scratch, "base", patients=self.sizes.patients, visits=self.sizes.visits,
                             size=self.sizes.image_size)
        return root

    def store(self, label: str):
        return fresh_store(self.base(), Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.scratch)))

    @property
    def data(self) -> str:
        s = self.sizes
        return f"{s.images} DICOM {s.image_size}x{s.image_size} ({s.patients} subjects x {s.visits} visits)"


_PROFILED: set[str] = set()


def _profiled(ctx: Context, label: str, fn):
    """Run ``fn``; under ``--profile`` print cProfile's top functions (cumulative and own time) of its
    first call for ``label`` to stdout (later calls, e.g. repeats, run unprofiled)."""
    if not ctx.profile or label in _PROFILED:
        return fn()
    _PROFILED.add(label)
    profiler = cProfile.Profile()
    result = profiler.runcall(fn)
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(18)
        lines = text.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        print(f"\n--- profile of {label}, by {order} (main process only) ---", *lines[start:], sep="\n", flush=True)
    return result


def _load_pixels(store, units) -> list[np.ndarray]:
    from store.pixels import PixelReader

    reader = PixelReader(store, DATASET)
    return [reader.read(path, int(frame or 0)) for path, frame in units]


# --- stages --------------------------------------------------------------------------------------------
def stage_ingest(ctx: Context) -> list[dict]:
    """ingest_dataset (workers 1 and all cores) vs a bare pydicom loop, on uncompressed 512x512 slices."""
    from bench.ingest import bare_loop, generate, ours

    n = ctx.sizes.ingest_files
    folder = ctx.scratch / "ingest-dicom"
    paths = generate(folder, n, 512)
    bare_loop(paths)  # warm the page cache: every configuration reads from memory
    warm = ctx.scratch / "ingest-warm"  # first use imports codecs, DuckDB...: not part of a steady rate
    warm.mkdir()
    for path in paths[:20]:
        (warm / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, warm / path.relative_to(folder))
    ours(warm, 1, ctx.scratch)
    workers = list(dict.fromkeys([1, usable_cores()]))
    times = {"bare": [], **{w: [] for w in workers}}
    peaks = {}
    for _ in range(ctx.sizes.repeats):  # alternated, so a busy moment hits every configuration alike
        times["bare"].append(bare_loop(paths)[0])
        for w in workers:
            with PeakRSS() as peak:
                if w == 1:
                    seconds = _profiled(ctx, "ingest workers=1", lambda: ours(folder, 1, ctx.scratch))[0]
                else:
                    seconds = ours(folder, w, ctx.scratch)[0]
            times[w].append(seconds)
            peaks[w] = peak
    size = f"{n} DICOM 512x512 uncompressed"
    return [
        bench_row("ingest", f"ingest_dataset workers={w}", items=n, unit="files", seconds=min(times[w]),
                  baseline="pydicom dcmread().pixel_array loop", baseline_seconds=min(times["bare"]), size=size,
                  peak=peaks[w], notes="ingest also hashes pixels, pseudonymises, writes index/scans/pairs tables")
        for w in workers
    ]


def _bare_forward_seconds(model: str, n: int, batch_size: int, device: str = "cpu", precision: str = "fp32",
                          compile: bool = False) -> float:
    """Seconds for the bare timm forward of ``n`` images (random in-memory tensors), after warm-up."""
    import timm
    import torch

    from extractors._cnn_model import arch_info

    size = arch_info(model).input_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model(model, pretrained=False, num_classes=0).eval()
    net = net.to(device, memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net)
    x = torch.rand(batch_size, *size, device=device).contiguous(memory_format=torch.channels_last)
    cuda = device.startswith("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype) if dtype else _null()
    batches = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    with torch.inference_mode(), autocast:
        for _ in range(3 if cuda else 1):
            net(x)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for b in batches:
            net(x[:b])
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started


def _null():
    import contextlib

    return contextlib.nullcontext()


def _decode_seconds(store, model: str, batch_size: int, workers: int, pin_memory: bool,
                    limit: int | None = None) -> tuple[float, int]:
    """(seconds, images) to decode and preprocess every scan (or the first ``limit``) through the CNN
    extractor's own DataLoader, without the network."""
    from extractors._cnn_data import INPUT_COLUMNS, Preprocess, UnitImages, make_loader
    from extractors._cnn_model import arch_info
    from store.units import scan_units

    info = arch_info(model)
    units = scan_units(store, DATASET)
    units = units.slice(0, limit if limit is not None else units.num_rows)
    units = units.select([c for c in INPUT_COLUMNS["image"] if c in units.column_names]).to_pylist()
    pre = Preprocess(size=tuple(info.input_size[1:]), interpolation=info.interpolation)
    loader = make_loader(UnitImages(store, units, "image", pre), batch_size=batch_size, workers=workers,
                         pin_memory=pin_memory)
    started = time.perf_counter()
    count = sum(len(indices) for indices, _, _ in loader)
    return time.perf_counter() - started, count


def _cnn_end_to_end(store, model: str, *, limit: int | None = None, **params) -> tuple[float, float, int]:
    """(seconds for run_extraction, seconds of prepare alone, decode workers) of one CNN extraction from DICOM
    of every scan (or the first ``limit``), into a table emptied first."""
    from extractors.cnn import CNNEmbedding
    from extractors.runner import run_extraction

    extractor = CNNEmbedding(model=model, weights="random", **params)
    units = extractor.units(store, DATASET)
    shutil.rmtree(store.table_dir(extractor.table_name()), ignore_errors=True)
    prepare = extractor.prepare
    spent = []

    def timed_prepare(store, pending):  # the one-time part of the run (network build, weights check)
        spent.append(timed(lambda: prepare(store, pending))[0])

    extractor.prepare = timed_prepare
    seconds, summary = timed(lambda: run_extraction(extractor, store, dataset=DATASET, limit=limit, progress=False))
    wanted = units.num_rows if limit is None else min(limit, units.num_rows)
    if summary.failed or summary.written != wanted:
        raise RuntimeError(f"CNN extraction wrote {summary.written} of {wanted} rows ({summary.failed} failed)")
    return seconds, sum(spent), extractor.workers_


def _bare_dcmread_seconds(store, limit: int) -> tuple[float, int]:
    """(seconds, files) of ``bench.ingest.bare_loop`` (``pydicom.dcmread(path).pixel_array``, one process) over
    the files of the first ``limit`` scans (each file read once, as a bare script would)."""
    from bench.ingest import bare_loop
    from store.pixels import dataset_root, resolve_relative
    from store.units import scan_units

    root = dataset_root(store, DATASET)
    units = scan_units(store, DATASET).slice(0, limit)
    paths = list(dict.fromkeys(resolve_relative(root, p) for p in units.column("path").to_pylist()))
    return bare_loop(paths)[0], len(paths)


def _decode_row(store, model: str, n: int, batch: int) -> dict:
    """The ``decode`` row: decode+preprocess per core (no loader workers, so one core) through the CNN
    extractor's own DataLoader, against a bare ``pydicom`` loop over the same files (target >= 0.5)."""
    ours, count = _decode_seconds(store, model, batch, 0, False, limit=n)
    bare, files = _bare_dcmread_seconds(store, n)
    return bench_row(
        "cnn", f"decode+preprocess {model}, per core (0 loader workers)", items=count, unit="images",
        seconds=ours, baseline="bare pydicom.dcmread(path).pixel_array loop, same files",
        baseline_seconds=bare * count / max(1, files), size=f"{count} of {DATASET}",
        notes=f"{count / ours:.1f} img/s decode+preprocess to the {model} input vs {files / bare:.1f} files/s "
              "bare decode; target ratio >= 0.5",
    )


def stage_cnn(ctx: Context) -> list[dict]:
    """CNN embeddings from DICOM on disk (CPU, fp32, batch 32) vs the bare forward on in-memory tensors."""
    import torch

    store = ctx.store("cnn")
    n = min(ctx.sizes.cnn_images, ctx.sizes.images)
    rows = []
    batch = 32
    for model in ctx.sizes.cnn_models:
        _cnn_end_to_end(store, model, device="cpu", batch_size=batch, limit=4)  # imports, first-call set-up
        peaks: list[PeakRSS] = []

        def ours(model=model, peaks=peaks):
            with PeakRSS() as peak:
                out = _profiled(ctx, f"cnn {model}",
                                lambda: _cnn_end_to_end(store, model, device="cpu", batch_size=batch, limit=n))
            peaks.append(peak)
            torch.set_num_threads(usable_cores())
            return out

        got = rounds({"ours": ours, "bare": lambda model=model: _bare_forward_seconds(model, n, batch)},
                     ctx.sizes.repeats)
        seconds, prepare_s, workers = min(got["ours"], key=lambda r: r[0])
        bare = min(got["bare"])
        decode, count = _decode_seconds(store, model, batch, workers, False, limit=n)
        forward_rate, decode_rate = n / bare, count / decode
        rows.append(bench_row(
            "cnn", f"{model} cpu fp32 batch {batch}, {workers} decode worker(s)", items=n, unit="images",
            seconds=seconds, baseline="bare timm forward, in-memory tensors", baseline_seconds=bare,
            size=f"{n} of {ctx.data}", peak=max(peaks, key=lambda p: p.tree_mb or 0),
            bound="decode" if decode_rate < forward_rate else "forward",
            notes=f"prepare (network build) {prepare_s:.1f} s; without it {n / max(1e-9, seconds - prepare_s):.1f} "
                  f"img/s; decode+preprocess alone {decode_rate:.1f} img/s ({workers} loader worker(s)); "
                  f"{torch.get_num_threads()} torch threads",
        ))
    rows.append(_decode_row(store, ctx.sizes.cnn_models[0], n, batch))
    return rows


def stage_cnn_gpu(ctx: Context, *, device: str = "cuda", models: tuple[str, ...] | None = None,
                  batch_sizes: tuple[int, ...] | None = None, images: int | None = None,
                  precision: str = "bf16") -> list[dict]:
    """The GPU sweep: end-to-end CNN extraction from DICOM vs the bare forward on the same device.

    Per model: decode workers min(8, cores - 1), ``precision`` autocast, channels_last (the extractor
    always uses it), each batch size of the sweep, and torch.compile too with ``--compile``. 'bound by'
    names the slower of decode+preprocess (measured alone through the same DataLoader) and the bare
    forward. Without CUDA (and ``device='cuda'``) it returns one 'unavailable: no GPU' row.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return [bench_row("cnn_gpu", "-", items=0, unit="images", seconds=None,
                          status="unavailable: no GPU (torch.cuda.is_available() is False)")]
    models = models or ("efficientnet_b0", "inception_v3", "convnext_tiny")
    batch_sizes = batch_sizes or ctx.sizes.gpu_batches
    n = images or ctx.sizes.gpu_images
    root = ctx.scratch / f"gpu{n}-store"
    if not root.is_dir():
        build_base_store(ctx.scratch, f"gpu{n}", patients=max(1, n // 4), visits=4, size=ctx.sizes.image_size)
    store = fresh_store(root, Path(tempfile.mkdtemp(prefix="gpu-", dir=ctx.scratch)))
    from store.cores import usable_cores

    workers = max(1, min(8, usable_cores() - 1))
    data = f"{n} DICOM {ctx.sizes.image_size}x{ctx.sizes.image_size}"
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else device
    rows = []
    compiles = (False, True) if ctx.compile else (False,)
    for model in models:
        decode, count = _decode_seconds(store, model, max(batch_sizes), workers, device.startswith("cuda"))
        decode_rate = count / decode
        for compiled in compiles:
            for batch in batch_sizes:
                try:
                    bare = _bare_forward_seconds(model, n, batch, device, precision, compile=compiled)
                    _cnn_end_to_end(store, model, device=device, batch_size=batch, workers=workers, precision=precision,
                                    compile=compiled, limit=batch)  # warm-up: imports, cuDNN autotuning, compilation
                    seconds, prepare_s, _ = _cnn_end_to_end(store, model, device=device, batch_size=batch,
                                                            workers=workers, precision=precision, compile=compiled)
                except Exception as exc:  # one setting (compile, memory) failing must not end the sweep
                    rows.append(bench_row("cnn_gpu", f"{model} b{batch} w{workers}{' compiled' if compiled else ''}",
                                          items=n, unit="images", seconds=None, size=data,
                                          status=f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"))
                    continue
                forward_rate = n / bare
                rows.append(bench_row(
                    "cnn_gpu", f"{model} b{batch} w{workers} {precision}{' compiled' if compiled else ''}", items=n,
                    unit="images", seconds=seconds, baseline=f"bare timm forward on {name}", baseline_seconds=bare,
                    size=data, bound="decode" if decode_rate < forward_rate else "forward",
                    notes=f"decode alone {decode_rate:.0f} img/s; prepare {prepare_s:.1f} s; without it "
                          f"{n / max(1e-9, seconds - prepare_s):.0f} img/s",
                ))
    return rows


def _measured_extraction(ctx: Context, label: str, extract, expected: int, what: str):
    """(a callable for ``rounds`` that times ``extract()`` — an extraction returning its summary — under
    ``PeakRSS`` and checks it wrote ``expected`` rows, the list the peak of each call lands in)."""
    peaks: list[PeakRSS] = []

    def call() -> float:
        with PeakRSS() as peak:
            seconds, summary = _profiled(ctx, label, lambda: timed(extract))
        peaks.append(peak)
        if summary.written != expected:
            raise RuntimeError(f"{what} wrote {summary.written} of {expected} rows")
        return seconds

    return call, peaks


def stage_bovw(ctx: Context) -> list[dict]:
    """BoVW (SIFT, 50 words) end to end vs a bare OpenCV SIFT detectAndCompute loop on in-memory images."""
    import cv2

    from extractors.bovw import BoVW
    from extractors.runner import run_extraction
    from store.units import scan_units

    store = ctx.store("bovw")
    units = scan_units(store, DATASET)
    n = units.num_rows
    images = _load_pixels(store, zip(units.column("path").to_pylist(), units.column("frame").to_pylist(), strict=True))
    eight_bit = [cv2.normalize(im, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8) for im in images]

    def bare():
        sift = cv2.SIFT_create(nfeatures=1000)
        for image in eight_bit:
            sift.detectAndCompute(image, None)

    def ours(workers):
        fresh = ctx.store("bovw")
        return run_extraction(BoVW(descriptor="sift", vocab_size=50, workers=workers, progress=False), fresh,
                              dataset=DATASET, progress=False)

    def bare_one_thread():
        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            bare()
        finally:
            cv2.setNumThreads(before)

    configs = {w: _measured_extraction(ctx, f"bovw workers={w}", functools.partial(ours, w), n, "BoVW")
               for w in dict.fromkeys([1, usable_cores()])}
    got = rounds({"bare": lambda: timed(bare)[0], "bare1": lambda: timed(bare_one_thread)[0],
                  **{f"w{w}": call for w, (call, _) in configs.items()}}, ctx.sizes.repeats)
    bare_s, single_s = min(got["bare"]), min(got["bare1"])
    return [
        bench_row(
            "bovw", f"sift 50 words, {w} worker(s)", items=n, unit="images", seconds=min(got[f"w{w}"]),
            baseline=f"cv2 SIFT detectAndCompute loop ({cv2.getNumThreads()} OpenCV threads)", baseline_seconds=bare_s,
            size=ctx.data, peak=max(peaks, key=lambda p: p.tree_mb or 0),
            notes=f"ours: decode + describe (1 OpenCV thread per worker) + descriptor table + vocabulary fit + "
                  f"histograms; bare loop with 1 OpenCV thread: {n / single_s:.1f} img/s")
        for w, (_, peaks) in configs.items()
    ]


def _bare_pair_stats(reference: np.ndarray, comparison: np.ndarray, first: bool) -> dict:
    """Registration shift by phase correlation, the shifted difference and its numpy summary statistics."""
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    if first:
        diff = np.full_like(comparison, comparison.min())
    else:
        shift, _, _ = phase_cross_correlation(comparison, reference, upsample_factor=20)
        diff = comparison - ndimage.shift(reference, shift, order=1, mode="nearest")
    sigma = float(diff.std())
    hist, _ = np.histogram(diff, bins=32)
    return {
        "mean": float(diff.mean()), "std": sigma, "abs_mean": float(np.abs(diff).mean()),
        "percentiles": np.percentile(diff, [1, 5, 25, 50, 75, 95, 99]),
        "hist": hist / max(1, hist.sum()),
        "above": [float((np.abs(diff - diff.mean()) > k * sigma).mean()) for k in (1, 2, 3)],
    }


def stage_diffstats(ctx: Context) -> list[dict]:
    """DiffStats (absolute) end to end vs a bare phase_cross_correlation + numpy statistics loop."""
    from extractors.diffstats import DiffStats
    from extractors.runner import run_extraction
    from store.units import pair_units

    store = ctx.store("diffstats")
    pairs = pair_units(store, DATASET, "absolute")
    n = pairs.num_rows
    refs = _load_pixels(store, zip(pairs.column("ref_path").to_pylist(), pairs.column("ref_frame").to_pylist(),
                                   strict=True))
    cmps = _load_pixels(store, zip(pairs.column("cmp_path").to_pylist(), pairs.column("cmp_frame").to_pylist(),
                                   strict=True))
    firsts = [a == b for a, b in zip(pairs.column("reference_scan_id").to_pylist(),
                                     pairs.column("comparison_scan_id").to_pylist(), strict=True)]

    def bare():
        for reference, comparison, first in zip(refs, cmps, firsts, strict=True):
            _bare_pair_stats(reference, comparison, first)

    def ours(workers):
        fresh = ctx.store("diffstats")
        return run_extraction(DiffStats(reference="absolute", workers=workers), fresh, dataset=DATASET, progress=False)

    configs = {w: _measured_extraction(ctx, f"diffstats workers={w}", functools.partial(ours, w), n, "DiffStats")
               for w in dict.fromkeys([1, usable_cores()])}
    got = rounds({"bare": lambda: timed(bare)[0], **{f"w{w}": call for w, (call, _) in configs.items()}},
                 ctx.sizes.repeats)
    return [
        bench_row(
            "diffstats",
            f"absolute, {w} worker(s)",
            items=n,
            unit="pairs",
            seconds=min(got[f"w{w}"]),
            baseline="skimage phase_cross_correlation (upsample 20) + numpy stats loop",
            baseline_seconds=min(got["bare"]),
            size=f"{n} pairs of {ctx.data}",
            peak=max(peaks, key=lambda p: p.tree_mb or 0),
            notes=f"{sum(firsts)} first-time-point pairs; ours adds overlap masks, noise sigma, SSIM, histogram",
        )
        for w, (_, peaks) in configs.items()
    ]


def stage_store_load(ctx: Context) -> list[dict]:
    """Loading an embedding table into numpy: DuckDB (store.featureset.load_matrix) vs pyarrow.parquet."""
    from bench.fit import load_row

    n, d = ctx.sizes.load_shape
    with PeakRSS() as peak:
        best = _profiled(ctx, "store load", lambda: load_row(n, d))
    size = f"{n} x FLOAT[{d}] ({best['megabytes']:.0f} MB) in parts of 4096 rows"
    return [
        bench_row("store_load", "duckdb -> numpy, 1 thread (zero-copy)", items=n, unit="rows", seconds=best["duckdb"],
                  baseline="pyarrow.parquet read -> numpy", baseline_seconds=best["pyarrow"], size=size, peak=peak,
                  notes="best of 3; peak covers all three readers"),
        bench_row("store_load", "duckdb -> numpy, all threads", items=n, unit="rows", seconds=best["duckdb_threads"],
                  baseline="pyarrow.parquet read -> numpy", baseline_seconds=best["pyarrow"], size=size, peak=peak),
    ]


def stage_fit(ctx: Context) -> list[dict]:
    """classifiers.create_model(name).fit (validation, variance filter, scaling, label encoding) vs the
    same scikit-learn / XGBoost estimator fitted on the same in-memory arrays."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    from bench.fit import synthetic
    from classifiers import create_model

    n, d = ctx.sizes.fit_shape
    X, y = synthetic(n, d)
    codes = LabelEncoder().fit_transform(y)
    rows = []
    for name, params in (("logistic", {}), ("xgboost", {"n_estimators": ctx.sizes.fit_trees})):
        model = create_model(name, random_state=0, **params)

        def bare(model=model):
            steps = ([StandardScaler()] if model.scale and model.uses_scaling else []) + [model._estimator(codes, None)]
            make_pipeline(*steps).fit(X, codes)

        def ours(name=name, params=params):
            create_model(name, random_state=0, **params).fit(X, y)

        peaks = []

        def measured(name=name, ours=ours, peaks=peaks):
            with PeakRSS() as peak:
                seconds = timed(lambda: _profiled(ctx, f"fit {name}", ours))[0]
            peaks.append(peak)
            return seconds

        bare(), ours()  # first calls import and allocate: not part of a fit's cost
        got = rounds({"bare": lambda bare=bare: timed(bare)[0], "ours": measured}, max(2, ctx.sizes.repeats))
        bare_s, seconds, peak = min(got["bare"]), min(got["ours"]), max(peaks, key=lambda p: p.process_mb or 0)
        label = f"{name}" + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
        rows.append(
            bench_row(
                "fit",
                label,
                items=n,
                unit="rows",
                seconds=seconds,
                baseline="bare estimator" + (" + StandardScaler" if model.scale and model.uses_scaling else ""),
                baseline_seconds=bare_s,
                size=f"{n} x {d} float32, 3 classes",
                peak=peak,
            )
        )
    return rows


STAGE_FUNCTIONS = {
    "ingest": stage_ingest, "cnn": stage_cnn, "bovw": stage_bovw, "diffstats": stage_diffstats,
    "store_load": stage_store_load, "fit": stage_fit, "cnn_gpu": stage_cnn_gpu,
}


# --- orchestration ------------------------------------------------------------------------------------
def _unavailable(stage: str, reason: str) -> dict:
    return bench_row(stage, "-", items=0, unit="", seconds=None, status=f"unavailable: {reason}")


def run_stage_here(stage: str, ctx: Context) -> list[dict]:
    """Run one stage in this process; a failure becomes one 'unavailable: reason' row."""
    try:
        return STAGE_FUNCTIONS[stage](ctx)
    except Exception as exc:  # a broken or missing module must not end the whole benchmark
        traceback.print_exc(file=sys.stderr)
        return [_unavailable(stage, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")]


def run_stage_process(stage: str, ctx: Context, *, timeout: float | None = None) -> list[dict]:
    """Run one stage in a child process (its own peak memory); rows come back as JSON."""
    out = ctx.scratch / f"rows-{stage}.json"
    command = (
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_stage",
            stage,
            "--_scratch",
            str(ctx.scratch),
            "--_out",
            str(out),
        ]
        + (["--quick"] if ctx.quick else [])
        + (["--profile", stage] if ctx.profile else [])
        + (["--compile"] if ctx.compile else [])
    )
    env = {**os.environ, "CHRONOFEAT_NO_BOOTSTRAP": "1", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(command, env=env, timeout=timeout, stdout=None, stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        return [_unavailable(stage, f"timed out after {timeout:.0f} s")]
    if out.exists():
        return json.loads(out.read_text())
    last = [line for line in (done.stderr or "").splitlines() if line.strip()][-1:] or [f"exit code {done.returncode}"]
    return [_unavailable(stage, f"stage process failed: {last[0][:200]}")]


def print_report(rows: list[dict], machine: dict, *, quick: bool, out=print) -> None:
    """The machine, the main table and (when measured) the GPU sweep table."""
    out(f"machine: {machine['cpu_model']}; {machine['cpu_usable']}/{machine['cpu_cores']} cores; "
        f"{machine['memory_gb']} GB; GPU: {machine['gpu'] or 'no GPU'}; Python {machine['python']}; "
        f"load average {machine['load_average']}")
    versions = machine["packages"]
    out("libraries: " + ", ".join(f"{k} {versions[k]}" for k in ("torch", "timm", "opencv-contrib-python-headless",
                                                                 "scikit-learn", "duckdb", "pyarrow", "pydicom", "ray")
                                  if k in versions))
    out(f"sizes: {'--quick' if quick else 'full'}; ratio = ours / baseline in items per second (1.00 = as fast as "
        "the bare library loop); peak RSS = the stage's own process, +workers = with its worker processes\n")
    main = [r for r in rows if r["stage"] != "cnn_gpu"]
    if main:
        out(format_table(main, TABLE_COLUMNS))
    _print_gpu_sweep([r for r in rows if r["stage"] == "cnn_gpu"], out)
    notes = [r for r in main if r.get("notes")]
    if notes:
        out("\nnotes:")
        for r in notes:
            out(f"  {r['stage']} / {r['variant']}: {r['notes']}")


def _print_gpu_sweep(gpu: list[dict], out) -> None:
    """The GPU sweep's table, or the line saying why there is none (nothing when it was not asked for)."""
    if gpu and all(r["status"] == "ok" or r["variant"] != "-" for r in gpu):
        out("\nGPU sweep: " + (gpu[0]["baseline"] or "") + "; data " + (gpu[0]["size"] or ""))
        out(format_table(gpu, GPU_COLUMNS + [("status", "status", "")]))
    elif gpu:
        out("\nGPU sweep: no GPU (torch.cuda.is_available() is False): " + gpu[0]["status"])


def _parse(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized data: a few minutes on 2 cores")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument(
        "--store", default=None, help="store to append the rows to (default $CHRONOFEAT_STORE, else ./featurestore)"
    )
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to a store")
    parser.add_argument("--compile", action="store_true", help="GPU sweep: also time torch.compile'd networks")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="STAGE",
        help="print cProfile's top functions of STAGE (main process; its timings then include the profiler's overhead)",
    )
    parser.add_argument("--stage-timeout", type=float, default=None, help="seconds before a stage is stopped")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows and machine details as JSON")
    parser.add_argument("--_stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.profile and args.profile not in STAGES:
        parser.error(f"--profile takes one of {', '.join(STAGES)}")
    return args, stages


def main(argv: list[str] | None = None) -> int:
    args, stages = _parse(argv)
    sizes = QUICK if args.quick else FULL
    if args._stage:  # child process: one stage, rows to a JSON file
        ctx = Context(sizes, args.quick, Path(args._scratch), profile=args.profile == args._stage, compile=args.compile)
        rows = run_stage_here(args._stage, ctx)
        Path(args._out).write_text(json.dumps(rows))
        return 0

    started = time.perf_counter()
    machine = machine_details()
    scratch = Path(tempfile.mkdtemp(prefix="chronofeat-bench-"))
    rows: list[dict] = []
    try:
        ctx = Context(sizes, args.quick, scratch, profile=bool(args.profile), compile=args.compile)
        if any(s in stages for s in ("cnn", "bovw", "diffstats")):
            seconds, _ = timed(ctx.base)
            print(f"generated and ingested {ctx.data} in {seconds:.1f} s", file=sys.stderr, flush=True)
        for stage in stages:
            stage_ctx = Context(sizes, args.quick, scratch, profile=args.profile == stage, compile=args.compile)
            stage_started = time.perf_counter()
            got = run_stage_process(stage, stage_ctx, timeout=args.stage_timeout)
            rows += got
            print(f"stage {stage}: {len(got)} row(s) in {time.perf_counter() - stage_started:.0f} s", file=sys.stderr,
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print_report(rows, machine, quick=args.quick)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1, default=str))
    if not args.no_record and rows:
        from store.benchmarks import append_benchmarks
        from store.layout import open_store

        store = open_store(args.store)
        run_id = append_benchmarks(store, rows, machine=machine, quick=args.quick)
        print(f"recorded {len(rows)} row(s) in {store.root / 'tables' / 'benchmarks'} (run {run_id}); compare machines "
              "with: python cli.py sql \"SELECT cpu_model, gpu, stage, variant, items_per_s, ratio FROM benchmarks\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
