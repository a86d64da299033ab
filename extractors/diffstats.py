"""Difference-image statistics per image pair (ChronoMID's difference images, summarised).

``DiffStats(reference="absolute")`` is registered as ``diffstats``; its table ``diffstats_absolute``
(or ``diffstats_relative``) holds one row per pair of that reference mode: the registration shift and
its confidence, then the statistics of ``features.stats`` (``diff_mean`` ... ``ssim`` as named float
columns and ``diff_histogram`` FLOAT[n_bins]).

Per pair: both images are read (colour is averaged to grey), centred on their common canvas with
each image's minimum as fill, the reference is registered onto the comparison by phase correlation
(translation, or rotation + translation with ``rigid``) and subtracted; the statistics use only the
pixels both images really cover. A subject's first time point (the pair of a scan with itself) has
the ChronoMID difference image, uniform at the comparison's minimum, no shift and confidence 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from extractors._registry import register_cli_alias, register_extractor
from extractors._workers import ordered_map
from extractors.base import BOOL, ExtractedBatch, Extractor, ParamRule, int_in, one_of
from features.difference import align_pair, first_time_point_difference
from features.errors import ChronofeatError, ParameterError
from features.intensity import to_grey
from features.registration import agreement
from features.stats import difference_statistics, statistic_names
from store.cores import usable_cores
from store.failures import Failure
from store.layout import Store
from store.units import pair_units

__all__ = ["DiffStats", "pair_statistics", "REFERENCE_MODES"]

REFERENCE_MODES = ("absolute", "relative")
_BATCH = 64


def pair_statistics(
    reference: np.ndarray,
    comparison: np.ndarray,
    *,
    is_first: bool = False,
    register: bool = True,
    rigid: bool = False,
    upsample: int = 20,
    n_bins: int = 32,
    k_sigmas: tuple[float, ...] = (1, 2, 3),
) -> tuple[dict[str, float], np.ndarray]:
    """(named statistics, histogram) of one image pair; arrays in, numbers out.

    Names: ``shift_dy``, ``shift_dx``, ``shift_confidence``, then ``features.stats.statistic_names``.
    """
    comparison = to_grey(comparison)
    if is_first:
        diff = first_time_point_difference(comparison)
        stats = difference_statistics(diff, comparison, comparison, n_bins=n_bins, k_sigmas=k_sigmas)
        head = {"shift_dy": 0.0, "shift_dx": 0.0, "shift_confidence": 1.0}
        return {**head, **stats.values}, stats.histogram
    aligned = align_pair(to_grey(reference), comparison, register=register, rigid=rigid, upsample=upsample)
    diff = aligned.comparison - aligned.reference
    stats = difference_statistics(
        diff, aligned.reference, aligned.comparison, mask=aligned.mask, n_bins=n_bins, k_sigmas=k_sigmas
    )
    registration = aligned.registration
    if registration is None:  # not registered: how well the images agree as they lie
        confidence, _ = agreement(
            aligned.comparison.astype(np.float64), aligned.reference.astype(np.float64), aligned.mask
        )
        shift = (0.0, 0.0)
    else:
        confidence, shift = registration.confidence, registration.shift
    head = {"shift_dy": float(shift[0]), "shift_dx": float(shift[1]), "shift_confidence": float(confidence)}
    return {**head, **stats.values}, stats.histogram


@lru_cache(maxsize=4)
def _pixel_reader(root: str, dataset: str):
    from store.layout import open_store
    from store.pixels import PixelReader

    return PixelReader(open_store(root, create=False), dataset)


def _pair_task(task: tuple) -> tuple:
    """One pair: ``("ok", pair_id, stats, histogram)`` or ``("fail", pair_id, error class, message, path)``."""
    pair_id, root, dataset, ref, cmp_, is_first, options = task
    path = cmp_[0]
    try:
        reader = _pixel_reader(root, dataset)
        comparison = reader.read(cmp_[0], cmp_[1])
        reference = None
        if not is_first:
            path = ref[0]
            reference = reader.read(ref[0], ref[1])
            path = cmp_[0]
        values, histogram = pair_statistics(reference, comparison, is_first=is_first, **options)
    except ChronofeatError as exc:
        return ("fail", pair_id, type(exc).__name__, str(exc), path)
    return ("ok", pair_id, values, histogram)


def _distinct_positive_numbers(value) -> bool:
    return (
        isinstance(value, (tuple, list)) and len(value) > 0
        and all(isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0 for k in value)
        and len({float(k) for k in value}) == len(value)
    )


@register_extractor("diffstats")
class DiffStats(Extractor):
    """Statistics of each pair's registered difference image.

    Parameters: ``reference`` ('absolute': against the subject's first time point, 'relative': against
    the previous one), ``register`` (phase-correlation registration, default True), ``rigid``
    (also recover a rotation), ``upsample`` (sub-pixel precision 1/upsample), ``n_bins`` of
    ``diff_histogram``, ``k_sigmas`` for the ``frac_above_{k}sigma`` columns and ``workers`` processes (None: all
    cores; it does not change the features and is left out of the configuration hash).
    """

    _RUNTIME_PARAMS = ("workers",)

    def __init__(
        self,
        *,
        reference: str = "absolute",
        register: bool = True,
        rigid: bool = False,
        upsample: int = 20,
        n_bins: int = 32,
        k_sigmas: tuple[float, ...] = (1, 2, 3),
        workers: int | None = None,
    ):
        self.reference = reference
        self.register = register
        self.rigid = rigid
        self.upsample = upsample
        self.n_bins = n_bins
        self.k_sigmas = k_sigmas
        self.workers = workers

    def validate_params(self) -> None:
        self.check_param_rules({"reference": one_of(REFERENCE_MODES), "register": BOOL, "rigid": BOOL})
        if self.rigid and not self.register:
            raise ParameterError(
                f"The 'rigid' parameter of {type(self).__name__} needs register=True. Got register=False instead."
            )
        self.check_param_rules({
            "upsample": int_in(1, 100),
            "n_bins": int_in(2, 4096),
            "k_sigmas": ParamRule("a non-empty tuple of distinct positive numbers", _distinct_positive_numbers),
            "workers": int_in(1, optional=True),
        })

    def key_column(self) -> str:
        return "pair_id"

    def feature_params(self) -> dict:
        params = super().feature_params()
        params["k_sigmas"] = [float(k) for k in params["k_sigmas"]]
        return params

    def table_name(self) -> str:
        """``diffstats_<reference>``, plus a configuration hash when other parameters are not the defaults."""
        base = f"{self.name}_{self.reference}"
        if self.feature_params() == type(self)(reference=self.reference).feature_params():
            return base
        return f"{base}_{self.config_hash()[:8]}"

    def column_names(self) -> list[str]:
        """The named float columns, in table order."""
        return ["shift_dy", "shift_dx", "shift_confidence", *statistic_names(tuple(self.k_sigmas))]

    def output_schema(self) -> pa.Schema:
        fields = [("pair_id", pa.string()), ("source_sha256", pa.string())]
        fields += [(name, pa.float64()) for name in self.column_names()]
        fields.append(("diff_histogram", pa.list_(pa.float32(), int(self.n_bins))))
        return pa.schema(fields)

    def units(self, store: Store, dataset: str) -> pa.Table:
        return pair_units(store, dataset, self.reference)

    def for_dataset(self, store: Store, dataset: str) -> Extractor:
        """``diffstats3d`` (``extractors.diffstats3d``) with this ``reference``, ``n_bins`` and ``k_sigmas``
        for a dataset that has volume pairs (its 2-D slice pairs are for ``extract --slices``), else ``self``."""
        from extractors.diffstats3d import DiffStats3D, has_volume_pairs

        if not has_volume_pairs(store, dataset, self.reference):
            return self
        if not self.register or self.rigid or self.upsample != 20:
            raise ParameterError(
                f"Dataset {dataset!r} holds 3-D pairs: they are always registered (rigidly, by SimpleITK), "
                "so 'register', 'rigid' and 'upsample' do not apply; use diffstats3d's parameters instead."
            )
        return DiffStats3D(reference=self.reference, n_bins=self.n_bins, k_sigmas=tuple(self.k_sigmas))

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        root = str(store.root)
        options = {
            "register": bool(self.register),
            "rigid": bool(self.rigid),
            "upsample": int(self.upsample),
            "n_bins": int(self.n_bins),
            "k_sigmas": tuple(float(k) for k in self.k_sigmas),
        }
        columns = {name: pending.column(name).to_pylist() for name in (
            "pair_id", "dataset", "reference_scan_id", "comparison_scan_id", "ref_path", "ref_frame",
            "cmp_path", "cmp_frame", "source_sha256")}
        n = pending.num_rows
        tasks = (
            (
                columns["pair_id"][i], root, columns["dataset"][i],
                (columns["ref_path"][i], int(columns["ref_frame"][i] or 0)),
                (columns["cmp_path"][i], int(columns["cmp_frame"][i] or 0)),
                columns["reference_scan_id"][i] == columns["comparison_scan_id"][i],
                options,
            )
            for i in range(n)
        )
        index = {pair_id: i for i, pair_id in enumerate(columns["pair_id"])}
        names = self.column_names()
        rows: dict[str, list[Any]] = {"pair_id": [], "source_sha256": [], "stats": [], "hist": []}
        failures: list[Failure] = []
        workers = int(self.workers or usable_cores())

        def batch() -> ExtractedBatch:
            nonlocal rows, failures
            arrays = [pa.array(rows["pair_id"], pa.string()), pa.array(rows["source_sha256"], pa.string())]
            arrays += [pa.array([s[name] for s in rows["stats"]], pa.float64()) for name in names]
            flat = np.asarray(rows["hist"], np.float32).reshape(-1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), int(self.n_bins)))
            out = ExtractedBatch(pa.Table.from_arrays(arrays, schema=self.output_schema()), failures)
            rows = {name: [] for name in rows}
            failures = []
            return out

        for result in ordered_map(_pair_task, tasks, workers, batch_size="auto"):
            i = index[result[1]]
            if result[0] == "fail":
                failures.append(Failure(key=result[1], dataset=columns["dataset"][i], path=result[4],
                                        stage=f"extract:{self.table_name()}", error_class=result[2], message=result[3]))
            else:
                rows["pair_id"].append(result[1])
                rows["source_sha256"].append(columns["source_sha256"][i])
                rows["stats"].append(result[2])
                rows["hist"].append(result[3])
            if len(rows["pair_id"]) + len(failures) >= _BATCH:
                yield batch()
        if rows["pair_id"] or failures:
            yield batch()


_GENERIC_OPTIONS = frozenset({"extractor", "dataset", "store", "limit", "progress", "quiet", "rows_per_part", "json"})
_DIFFSTATS_OPTIONS = frozenset({"reference", "workers"})


def _diffstats_builder(options: dict) -> DiffStats:
    foreign = sorted(
        k for k, v in options.items() if v not in (None, False) and k not in _DIFFSTATS_OPTIONS | _GENERIC_OPTIONS
    )
    if foreign:
        raise ParameterError(
            f"Option(s) {', '.join('--' + k.replace('_', '-') for k in foreign)} "
            "do not apply to --extractor diffstats; "
            "it reads --reference (absolute|relative) and --workers."
        )
    params: dict[str, Any] = {"reference": options.get("reference") or "absolute"}
    if options.get("workers") is not None:
        params["workers"] = options["workers"]
    return DiffStats(**params)


register_cli_alias("diffstats", _diffstats_builder)
