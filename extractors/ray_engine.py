"""Run an extractor on Ray Data: the same table, keys, provenance and resume rules as ``extractors.runner``.

``run_extraction_ray(extractor, store, dataset=...)`` is ``run_extraction`` with the per-unit work
spread over a Ray cluster (one machine or many):

1. on the driver, holding the table's writer lock (``extractors.runner.writer_lock``: a second run of
   the same table waits, then finds only what is still missing): the dataset's work units, minus
   those already stored with the same source pixels (``pending_units``: the resume rule of the
   local engine), cut to ``limit``; then ``prepare`` —
   so a vocabulary is fitted once and weights are resolved and checked once, before any task runs;
2. the pending units become a Ray dataset (``ray.data.from_arrow``) of blocks of ``block_rows``
   units, and ``map_batches`` computes them:

   * CNN embeddings (``extractors.cnn.CNNEmbedding``): CPU tasks decode and preprocess the images
     (``extractors._cnn_data.UnitImages``), then a pool of actors each holding the network embeds
     them in batches of the extractor's ``batch_size`` — one GPU per actor (``num_gpus=1``) when the
     extractor's device allows CUDA (``auto`` / ``cuda``) and the cluster has GPUs, else CPU actors;
   * every other extractor: CPU tasks run the prepared extractor's own ``transform`` on a block
     (with its ``workers`` set to 1: Ray provides the parallelism; one with a ``device`` — Siamese,
     CAE — runs with ``device='cpu'``, which does not change its table). A BoVW extractor first brings
     its keypoint-descriptor table up to date the same way, so describing images runs on Ray too;

3. results stream back to the driver, which writes them with the local engine's part writer
   (``extractors.runner.PartWriter``: a part at ``rows_per_part`` rows or every ``flush_seconds`` of
   work, failures recorded and fixed ones resolved) with the metadata the local engine writes
   (``extractors.runner.extraction_metadata``) plus ``chronofeat.engine``. Rows of both engines mix
   freely in one table: the configuration hash is the same, and an interrupted run of either is
   resumed by either.

The store must be visible at the same path to the driver and every worker: on one machine any
directory works; on a cluster it must live on shared storage (NFS, a parallel file system, a mounted
bucket) mounted at the same path on every node, because workers read the dataset's pixels and the
store's artifacts (weights, vocabularies) from it. Only the driver writes to it. chronofeat (same
version) must be importable on every node.

Ray is an optional dependency: ``pip install 'chronofeat[ray]'``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import pickle
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from extractors.base import ExtractedBatch, Extractor
from extractors.runner import (
    ExtractionSummary,
    PartWriter,
    extraction_metadata,
    find_pending,
    flush_interval,
    write_batches,
    writer_lock,
)
from features.errors import BackendUnavailableError, ChronofeatError, ParameterError
from store.failures import Failure
from store.layout import Store

__all__ = ["run_extraction_ray", "ray_available", "RayPlan"]

_LOG = logging.getLogger(__name__)
_PACKED = pa.schema([("rows", pa.binary()), ("failures", pa.string()), ("units", pa.int64()), ("error", pa.binary())])


def ray_available() -> bool:
    """True when the ``ray`` package (with Ray Data) can be imported."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The Ray engine needs the 'ray[data]' package, which is not importable here ({exc}). Install it with "
            "pip install 'chronofeat[ray]', or run extract with --engine local."
        ) from None
    return ray


@contextmanager
def _ray_session(address: str | None, num_cpus: int | None):
    """Connect to Ray (``address``: None starts a local instance, or uses $RAY_ADDRESS; ``'auto'``; ``ray://...``).

    An already initialised Ray is used as it is. Ray is shut down on exit only when this call started it.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        options = {"include_dashboard": False, "log_to_driver": False}
        if address:
            if num_cpus is not None:
                raise ParameterError(
                    "num_cpus applies only to a local Ray instance started by chronofeat; a cluster reached "
                    f"through address={address!r} has the CPUs its nodes declare (ray start --num-cpus)."
                )
        elif num_cpus is not None:
            options["num_cpus"] = int(num_cpus)
        try:
            ray.init(address=address or None, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BackendUnavailableError(
                f"Could not connect to Ray at {address or 'a new local instance'}: {str(exc).rstrip('.')}. "
                "Start the cluster with "
                "'ray start --head' and pass --address auto on its head node (or ray://HEAD:10001), or leave "
                "--address out to start a local instance."
            ) from exc
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _quiet_ray_data(ray):
    """Ray Data's own progress bars and INFO lines off while we show ours (restored afterwards)."""
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, getattr(context, "print_on_execution_start", None))
    context.enable_progress_bars = False
    if saved[1] is not None:
        context.print_on_execution_start = False
    loggers = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}  # the latter: "bars disabled"
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        context.enable_progress_bars = saved[0]
        if saved[1] is not None:
            context.print_on_execution_start = saved[1]
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --- packing results: one row per computed batch (Arrow IPC rows + failures as JSON) -----------------
def _pack(batches: list[ExtractedBatch], units: int) -> pa.Table:
    """Rows and failures of some batches -> one row of ``_PACKED`` (the rows keep their exact Arrow schema)."""
    tables = [b.rows if isinstance(b.rows, pa.Table) else pa.Table.from_batches([b.rows]) for b in batches]
    tables = [t for t in tables if t.num_rows]
    payload = b""
    if tables:
        sink = io.BytesIO()
        combined = pa.concat_tables(tables)
        with pa.ipc.new_stream(sink, combined.schema) as writer:
            writer.write_table(combined)
        payload = sink.getvalue()
    failures = [
        {**{k: v for k, v in f.__dict__.items() if k != "time"}, "time": f.time.isoformat()}
        for b in batches for f in b.failures
    ]
    return pa.Table.from_pylist([{"rows": payload, "failures": json.dumps(failures), "units": units, "error": None}],
                                schema=_PACKED)


def _pack_error(exc: ChronofeatError) -> pa.Table:
    """A task's ``ChronofeatError`` as a packed row, so the driver raises it as itself (Ray would wrap it)."""
    return pa.Table.from_pylist(
        [{"rows": b"", "failures": "[]", "units": 0, "error": pickle.dumps(exc)}], schema=_PACKED
    )


def _unpack(packed: pa.Table) -> Iterator[ExtractedBatch]:
    """The inverse of ``_pack`` for every row of a packed block (``units``: the units it accounts for);
    a packed error is raised."""
    for rows, failures, units, error in zip(
        packed.column("rows").to_pylist(), packed.column("failures").to_pylist(), packed.column("units").to_pylist(),
        packed.column("error").to_pylist(), strict=True,
    ):
        if error:
            raise pickle.loads(error)
        table = pa.ipc.open_stream(rows).read_all() if rows else None
        records = [Failure(**{**f, "time": datetime.fromisoformat(f["time"])}) for f in json.loads(failures)]
        yield ExtractedBatch(table, records, units=int(units))


def _unpacked(results) -> Iterator[ExtractedBatch]:
    """Every batch of a Ray dataset of packed rows, as it streams back to the driver."""
    for packed in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from _unpack(packed)


def _open_store(root: str) -> Store:
    from store.layout import open_store

    return open_store(root, create=False)


# --- generic extractors: the prepared extractor's own transform, one block per task -----------------
def _single_worker(extractor: Extractor) -> Extractor:
    """A shallow copy of a prepared extractor with in-process work (``workers=1``) and no progress bars."""
    worker = copy.copy(extractor)
    params = extractor.get_params(deep=False)
    if "workers" in params:
        worker.workers = 1
    if "progress" in params:
        worker.progress = False
    return worker


def _transform_block(block: pa.Table, *, extractor: Extractor, root: str) -> pa.Table:
    """Ray task: the extractor's ``transform`` over one block of units -> one packed row."""
    try:
        batches = list(_single_worker(extractor).transform(_open_store(root), block))
    except ChronofeatError as exc:
        return _pack_error(exc)
    return _pack(batches, block.num_rows)


# --- CNN embeddings: CPU tasks decode, actors (GPU when there is one) embed ----------------------------
_CNN_BLOCK_ROWS = 64  # decoded images travel through the object store: ~70 MB per block at 299 px


def _cnn_decode(block: pa.Table, *, root: str, kind: str, pre, key: str) -> dict:
    """Ray task: units -> network inputs (B, 3, H, W) float32, with the failure of each unit that has none."""
    from extractors._cnn_data import UnitImages, unit_path

    store = _open_store(root)
    units = block.to_pylist()
    images = UnitImages(store, units, kind, pre)
    height, width = pre.size
    out = np.zeros((len(units), 3, height, width), np.float32)
    error_class, message = [], []
    for i, unit in enumerate(units):
        try:
            out[i] = images.image(unit)
            error_class.append("")
            message.append("")
        except ChronofeatError as exc:
            error_class.append(type(exc).__name__)
            message.append(str(exc))
    return {
        "key": np.array([u[key] for u in units], dtype=object),
        "source_sha256": np.array([u["source_sha256"] for u in units], dtype=object),
        "dataset": np.array([u.get("dataset") or "" for u in units], dtype=object),
        "path": np.array([unit_path(u) for u in units], dtype=object),
        "error_class": np.array(error_class, dtype=object),
        "message": np.array(message, dtype=object),
        "image": out,
    }


class _CNNActor:
    """Ray actor: holds one prepared ``CNNEmbedding`` and embeds decoded batches (see the module docstring)."""

    def __init__(self, params: dict, root: str, threads: int):
        from extractors.cnn import CNNEmbedding

        self.store = _open_store(root)
        self.extractor = CNNEmbedding(**params)
        self.extractor.prepare(self.store, pa.table({}))
        if self.extractor.device_ == "cpu":
            import torch

            torch.set_num_threads(max(1, int(threads)))
        self.schema = self.extractor.output_schema()
        self.stage = f"extract:{self.extractor.name}"

    def __call__(self, batch: dict) -> pa.Table:
        import torch

        errors = [str(e) for e in batch["error_class"]]
        good = np.array([not e for e in errors], dtype=bool)
        failures = [
            Failure(key=str(k), dataset=str(d), path=str(p), stage=self.stage, error_class=e, message=str(m))
            for k, d, p, e, m in zip(
                batch["key"], batch["dataset"], batch["path"], errors, batch["message"], strict=True
            )
            if e
        ]
        rows = self.schema.empty_table()
        if good.any():
            try:
                vectors = self.extractor.embed(torch.from_numpy(np.ascontiguousarray(batch["image"][good])))
                rows = self.extractor.embedding_rows(
                    [str(k) for k in batch["key"][good]], [str(s) for s in batch["source_sha256"][good]], vectors
                )
            except ChronofeatError as exc:
                return _pack_error(exc)
        return _pack([ExtractedBatch(rows, failures)], len(errors))


class RayPlan:
    """How the work is laid out on the cluster (recorded in ``chronofeat.engine``)."""

    def __init__(self, *, cpus: int, gpus: int, block_rows: int, inference: str = "", actors: int = 0,
                 actor_cpus: int = 0, actor_gpus: int = 0):
        self.cpus, self.gpus, self.block_rows = cpus, gpus, block_rows
        self.inference, self.actors, self.actor_cpus, self.actor_gpus = inference, actors, actor_cpus, actor_gpus

    def describe(self) -> dict:
        """JSON-able summary for the parts' metadata and the progress line."""
        out = {"cluster_cpus": self.cpus, "cluster_gpus": self.gpus, "block_rows": self.block_rows}
        if self.inference:
            out.update(
                inference=self.inference, actors=self.actors, actor_cpus=self.actor_cpus, actor_gpus=self.actor_gpus
            )
        return out


def _is_cnn(extractor: Extractor) -> bool:
    try:
        from extractors.cnn import CNNEmbedding
    except ImportError:  # pragma: no cover - the module is part of the package
        return False
    return isinstance(extractor, CNNEmbedding)


def _upstream(extractor: Extractor) -> list[Extractor]:
    """Extractors whose tables ``extractor.prepare`` needs complete (BoVW: its keypoint descriptors)."""
    hook = getattr(extractor, "upstream_extractors", None)
    return list(hook()) if callable(hook) else []


def _on_cpu(extractor: Extractor) -> Extractor:
    """The extractor to run in Ray's CPU tasks: itself, or a copy with ``device='cpu'`` (a network prepared
    on the driver's GPU could not be used by CPU tasks). Refused when the device would change the table."""
    params = extractor.get_params(deep=False)
    if params.get("device", "cpu") == "cpu":
        return extractor
    from sklearn.base import clone

    cpu = clone(extractor).set_params(device="cpu")
    if cpu.config() != extractor.config() or cpu.table_name() != extractor.table_name():
        raise BackendUnavailableError(
            f"The Ray engine runs {type(extractor).__name__} in CPU tasks (GPU actors serve CNN embeddings only), "
            f"and for this extractor the device is part of the table's identity. Pass --device cpu, or use "
            "--engine local on a GPU machine."
        )
    return cpu


def _block_rows(n: int, cpus: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise ParameterError(
                "The 'block_rows' parameter of run_extraction_ray must be an int in [1, inf). "
                f"Got {block_rows!r} instead."
            )
        return int(block_rows)
    # about four blocks per CPU keeps every worker busy to the end; 256 caps the rows lost to a failed task
    return int(max(1, min(256, math.ceil(n / max(1, 4 * cpus)))))


def _blocks(pending: pa.Table, rows: int) -> list[pa.Table]:
    return [pending.slice(start, rows) for start in range(0, pending.num_rows, rows)]


class _Cluster(NamedTuple):
    """The Ray session a run uses: the ``ray`` module, the address asked for, and the cluster's resources."""

    ray: Any
    address: str | None
    cpus: int
    gpus: int

    def engine(self, plan: RayPlan) -> dict:
        """The ``chronofeat.engine`` metadata of the parts this run writes."""
        return {"engine": "ray", "ray": self.ray.__version__, "address": self.address or "local", **plan.describe()}


class _CNNPlan(NamedTuple):
    """How a CNN runs on Ray: the driver-side copy to prepare, the actors' parameters, the layout."""

    driver: Extractor
    params: dict
    plan: RayPlan


@dataclass(frozen=True)
class _RunSettings:
    """The options of one ``run_extraction_ray`` call that the work on the cluster follows."""

    dataset: str
    limit: int | None
    rows_per_part: int
    flush_seconds: float
    progress: bool
    block_rows: int | None


class _Blocks(NamedTuple):
    """The pending units of a run and how they are cut into Ray blocks of ``rows`` units."""

    pending: pa.Table
    blocks: list[pa.Table]
    rows: int


class _RayJob(NamedTuple):
    """A laid-out extraction: the parts' metadata and schema, and the Ray dataset of packed results."""

    metadata: dict[str, str]
    schema: pa.Schema
    results: Any
    plan: RayPlan


def _cnn_plan(extractor, cluster: _Cluster) -> _CNNPlan:
    """Where the network runs and with which precision (the driver-side copy is prepared later).

    ``auto`` precision resolves as a local run on the actors' device does (fp32 on CPU, bf16 on a GPU
    with bf16), so the table is the one a local run on that hardware fills.
    """
    from sklearn.base import clone

    from extractors._cnn_model import choose_precision

    cpus, gpus, ray = cluster.cpus, cluster.gpus, cluster.ray
    wants_cuda = extractor.device == "auto" or extractor.device.startswith("cuda")
    if extractor.device.startswith("cuda") and gpus == 0:
        raise BackendUnavailableError(
            f"--device {extractor.device} was asked for, but the Ray cluster has no GPU (resources: {cpus} CPUs). "
            "Add GPU nodes (ray start --num-gpus N), or run with --device cpu or --device auto."
        )
    use_gpu = wants_cuda and gpus > 0
    device = "cuda" if use_gpu else "cpu"  # inside an actor, its one GPU is cuda:0
    if extractor.precision != "auto":
        precision = extractor.precision
    elif use_gpu:
        precision = ray.get(ray.remote(num_gpus=1, num_cpus=0)(_remote_precision).remote())
    else:
        precision = choose_precision("auto", "cpu")
    params = {**extractor.get_params(deep=False), "device": device, "precision": precision, "workers": 0}
    driver = clone(extractor).set_params(device="cpu", precision=precision, workers=0)
    if use_gpu:
        actors, actor_cpus, actor_gpus = max(1, gpus), 1, 1
    else:
        actor_cpus = max(1, min(4, cpus // 2))
        actors, actor_gpus = max(1, cpus // (2 * actor_cpus)), 0
    plan = RayPlan(cpus=cpus, gpus=gpus, block_rows=0, inference=f"{device} actors [{precision}]",
                   actors=actors, actor_cpus=actor_cpus, actor_gpus=actor_gpus)
    return _CNNPlan(driver, params, plan)


def _remote_precision() -> str:
    from extractors._cnn_model import choose_precision

    return choose_precision("auto", "cuda")


def _cnn_dataset(ray, blocks, extractor, cnn: _CNNPlan, root: str):
    """decode (CPU tasks) -> embed (actor pool), as one streaming Ray dataset of packed rows."""
    from extractors._cnn_data import INPUT_COLUMNS

    driver, plan = cnn.driver, cnn.plan
    key = driver.key_column()
    columns = [c for c in INPUT_COLUMNS[driver.input] if c in blocks[0].column_names]
    height, width = driver._preprocess().size
    # The decode tasks reserve memory for their block's images; the differing resources also keep Ray
    # from fusing decoding into the actors, so images are decoded in parallel while the actors embed.
    memory = int(plan.block_rows * 3 * height * width * 4 * 4 + 256 * 2**20)
    decoded = ray.data.from_arrow([b.select(columns) for b in blocks]).map_batches(
        _cnn_decode, batch_size=None, batch_format="pyarrow", num_cpus=1, memory=memory,
        fn_kwargs={"root": root, "kind": driver.input, "pre": driver._preprocess(), "key": key},
    )
    options = {"num_gpus": plan.actor_gpus} if plan.actor_gpus else {}
    return decoded.map_batches(
        _CNNActor, batch_size=int(extractor.batch_size), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.actor_cpus,
        fn_constructor_kwargs={"params": cnn.params, "root": root, "threads": plan.actor_cpus}, **options,
    )


def _cnn_job(extractor: Extractor, cnn: _CNNPlan, store: Store, work: _Blocks, cluster: _Cluster,
             dataset: str) -> _RayJob:
    """Prepare the driver-side CNN once (weights resolved and checked before any task), then lay out the
    decode tasks and the embedding actors."""
    driver, params, plan = cnn
    plan.block_rows = work.rows
    driver.prepare(store, work.pending)
    provenance = driver.provenance()
    provenance["settings"] = extractor.get_params(deep=False)
    provenance["run"] = {**provenance.get("run", {}), "device": params["device"], "workers": 0,
                         "torch_threads": plan.actor_cpus}
    for attr in ("network_", "embedder_"):  # the actors hold their own copies
        driver.__dict__.pop(attr, None)
    metadata = extraction_metadata(driver, dataset, provenance={**provenance, "engine": cluster.engine(plan)})
    results = _cnn_dataset(cluster.ray, work.blocks, extractor, cnn, str(store.root.resolve()))
    return _RayJob(metadata, driver.output_schema(), results, plan)


def _generic_job(target: Extractor, store: Store, work: _Blocks, cluster: _Cluster, dataset: str) -> _RayJob:
    """Prepare ``target`` on the driver (a vocabulary fitted once...), then one CPU task per block runs its
    ``transform``."""
    target.prepare(store, work.pending)
    plan = RayPlan(cpus=cluster.cpus, gpus=cluster.gpus, block_rows=work.rows)
    metadata = extraction_metadata(target, dataset, provenance={**target.provenance(), "engine": cluster.engine(plan)})
    results = cluster.ray.data.from_arrow(work.blocks).map_batches(
        _transform_block, batch_size=None, batch_format="pyarrow", num_cpus=1,
        fn_kwargs={"extractor": target, "root": str(store.root.resolve())},
    )
    return _RayJob(metadata, target.output_schema(), results, plan)


def _identity_needs_cluster(extractor: Extractor) -> bool:
    """True for a CNN whose table (precision) depends on whether the cluster has GPUs."""
    return _is_cnn(extractor) and extractor.precision == "auto" and extractor.device != "cpu"


def run_extraction_ray(
    extractor: Extractor,
    store: Store,
    *,
    dataset: str,
    limit: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    rows_per_part: int = 4096,
    flush_seconds: float | None = None,
    progress: bool = True,
    block_rows: int | None = None,
) -> ExtractionSummary:
    """Compute ``extractor``'s features for every unit of ``dataset`` not yet stored, on Ray.

    Same inputs, table, metadata, resume rule and ``ExtractionSummary`` as
    ``extractors.runner.run_extraction``. ``address``: None starts a local Ray instance (or joins the
    one $RAY_ADDRESS names, or the one already initialised in this process), ``'auto'`` joins the
    cluster this machine belongs to, ``'ray://HEAD:10001'`` a remote one through Ray Client.
    ``num_cpus`` sizes a local instance only. ``block_rows`` units go to one task (None: about four
    blocks per cluster CPU, at most 256 units). Ray is shut down at the end only when this call
    started it. The store must be on storage every worker sees at the same path (module docstring).
    Parts are written at ``rows_per_part`` rows and at least every ``flush_seconds`` of work (None:
    ``$CHRONOFEAT_FLUSH_SECONDS``, else 30), as by the local engine.
    """
    started = time.perf_counter()
    extractor = extractor.for_dataset(store, dataset)
    settings = _RunSettings(dataset, limit, rows_per_part, flush_interval(flush_seconds), progress, block_rows)
    if not _identity_needs_cluster(extractor):  # nothing to do: answer without starting Ray
        work = find_pending(extractor, store, dataset, limit=limit)
        if work.pending.num_rows == 0:
            return work.summary(extractor.table_name(), extractor.key_column(), started)
    with _ray_session(address, num_cpus) as ray, _quiet_ray_data(ray):
        resources = ray.cluster_resources()
        cluster = _Cluster(ray, address, int(resources.get("CPU", 1)), int(resources.get("GPU", 0)))
        return _run_on_cluster(extractor, store, cluster, settings, started)


def _run_on_cluster(extractor: Extractor, store: Store, cluster: _Cluster, settings: _RunSettings,
                    started: float) -> ExtractionSummary:
    """``run_extraction_ray`` once Ray is up: lock the table, find the pending units, lay out and write."""
    cnn = None
    if _is_cnn(extractor):
        extractor.validate_params()
        cnn = _cnn_plan(extractor, cluster)
        target = cnn.driver
    else:
        target = _on_cpu(extractor)
    table, key = target.table_name(), target.key_column()
    with writer_lock(store, table):
        work = find_pending(target, store, settings.dataset, limit=settings.limit)
        if work.pending.num_rows == 0:
            return work.summary(table, key, started)
        rows = _block_rows(work.pending.num_rows, cluster.cpus, settings.block_rows)
        if cnn is not None and settings.block_rows is None:
            rows = min(rows, _CNN_BLOCK_ROWS)
        for upstream in _upstream(extractor):
            run_extraction_ray(upstream, store, dataset=settings.dataset, rows_per_part=settings.rows_per_part,
                               flush_seconds=settings.flush_seconds, progress=settings.progress,
                               block_rows=settings.block_rows)
        blocks = _Blocks(work.pending, _blocks(work.pending, rows), rows)
        if cnn is not None:
            job = _cnn_job(extractor, cnn, store, blocks, cluster, settings.dataset)
        else:
            job = _generic_job(target, store, blocks, cluster, settings.dataset)
        if settings.progress:
            inference = f"; {job.plan.inference}" if job.plan.inference else ""
            print(
                f"chronofeat: ray engine -> table {table}: {work.pending.num_rows} "
                f"units in {len(blocks.blocks)} block(s) on "
                f"{cluster.cpus} CPU(s), {cluster.gpus} GPU(s){inference}",
                file=sys.stderr,
            )
        writer = PartWriter(store, table, key=key, schema=job.schema, metadata=job.metadata, dataset=settings.dataset,
                            producer=f"extractor:{extractor.name}", rows_per_part=settings.rows_per_part,
                            flush_seconds=settings.flush_seconds)
        write_batches(writer, _unpacked(job.results), total=work.pending.num_rows, progress=settings.progress)
    return work.summary(table, key, started, written=writer.written, failed=writer.failed)
