"""Difference statistics of longitudinal 3-D pairs: register, resample, subtract, summarise.

``DiffStats3D(reference="absolute")`` is registered as ``diffstats3d``; ``extract --extractor diffstats``
builds it by itself on a dataset whose pairs are volume pairs (``extractors.diffstats.DiffStats.for_dataset``).
Its table ``diffstats3d_absolute`` (or ``_relative``) holds one row per volume pair (key ``pair_id`` of
``volume_pairs``): the registration's quality and transform, the difference statistics of the whole volume
and of ``n_slabs`` slabs along z (``features.volume_stats``: the 2-D ``diffstats`` names, and
``slab{i}_<name>``), and ``diff_histogram`` FLOAT[n_bins].

Per pair the comparison volume is registered onto the reference (``features.registration3d``: rigid or
affine, multi-resolution, correlation or Mattes mutual information), resampled on the reference grid and
``comparison - reference`` is summarised where both volumes hold data. A subject's first time point (the
pair of a volume with itself) is not registered: its difference is uniform at the volume's minimum, as in
2-D, its transform the identity. Pairs run one at a time (two volumes and their difference in memory).

Registration columns: ``reg_metric`` (final metric value, lower is better; -1 is a perfect correlation),
``reg_iterations`` (int), ``reg_rot_z_deg`` / ``reg_rot_y_deg`` / ``reg_rot_x_deg`` (Euler angles),
``reg_angle_deg`` (total rotation), ``reg_shift_z_mm`` / ``_y_`` / ``_x_`` (displacement of the reference
grid's centre) and ``reg_transform`` FLOAT[12] (the top three rows of the 4x4 ``(z, y, x)`` mm matrix
mapping a reference-grid point to the comparison volume).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from extractors._registry import register_cli_alias, register_extractor
from extractors.base import BOOL, ExtractedBatch, Extractor, ParamRule, int_in, one_of
from features.errors import ChronofeatError, ParameterError
from features.registration3d import (
    METRICS,
    TRANSFORMS,
    difference_volume,
    identity_metric,
    register_volume,
)
from features.volume_stats import slab_names, volume_statistics
from store.failures import Failure
from store.layout import Store
from store.tables import table_exists
from store.volumes import VOLUME_PAIRS_TABLE, VolumeReader, read_volume_pairs, read_volumes

__all__ = ["DiffStats3D", "REGISTRATION_COLUMNS", "volume_pair_statistics", "has_volume_pairs"]

REFERENCE_MODES = ("absolute", "relative")
REGISTRATION_COLUMNS = (
    "reg_metric", "reg_rot_z_deg", "reg_rot_y_deg", "reg_rot_x_deg", "reg_angle_deg",
    "reg_shift_z_mm", "reg_shift_y_mm", "reg_shift_x_mm",
)


def _positive_tuple(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) > 0
            and all(isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0 for k in value)
            and len({float(k) for k in value}) == len(value))


def volume_pair_statistics(
    reference, comparison, *, is_first: bool, registration: dict, statistics: dict
) -> tuple[dict[str, float], np.ndarray, np.ndarray, int]:
    """One volume pair: ``(named floats, histogram, transform row FLOAT[12], iterations)``.

    ``reference`` / ``comparison``: ``store.volumes.Volume``-like objects (``array``, ``spacing``);
    ``registration``: keywords of ``features.registration3d.register_volume``; ``statistics``: of
    ``features.volume_stats.volume_statistics``.
    """
    if is_first:
        array = np.asarray(comparison.array, np.float32)
        diff = np.full(array.shape, array.min(), np.float32)
        stats = volume_statistics(diff, array, array, **statistics)
        metric = identity_metric(array, array, spacing=comparison.spacing, metric=registration["metric"],
                                 samples=registration["samples"], seed=registration["seed"])
        head = dict.fromkeys(REGISTRATION_COLUMNS, 0.0)
        head["reg_metric"] = metric
        return {**head, **stats.values}, stats.histogram, np.eye(4)[:3].astype(np.float32).reshape(12), 0
    found = register_volume(reference.array, comparison.array, spacing_fixed=reference.spacing,
                            spacing_moving=comparison.spacing, **registration)
    fixed = np.asarray(reference.array, np.float32)
    diff, mask = difference_volume(found, fixed)
    stats = volume_statistics(diff, fixed, found.resampled, mask=mask, **statistics)
    del diff
    move = found.transform
    head = {
        "reg_metric": found.metric,
        **{f"reg_rot_{axis}_deg": float(v) for axis, v in zip("zyx", move.rotation_deg, strict=True)},
        "reg_angle_deg": move.angle_deg,
        **{f"reg_shift_{axis}_mm": float(v) for axis, v in zip("zyx", move.shift_mm, strict=True)},
    }
    return {**head, **stats.values}, stats.histogram, move.as_row(), found.iterations


@register_extractor("diffstats3d")
class DiffStats3D(Extractor):
    """Registered difference statistics of each longitudinal volume pair (see the module docstring).

    Parameters: ``reference`` ('absolute' | 'relative' pairs), ``registration`` ('rigid' | 'affine'),
    ``metric`` ('correlation' | 'mattes'), ``samples`` (voxels the metric reads at full resolution;
    ``samples / shrink`` on coarser levels),
    ``shrink`` and ``smoothing`` (mm) of the registration pyramid, ``iterations`` (at most, per level),
    ``seed`` (of the sampling), ``n_slabs`` along z (0: none), ``n_bins`` of ``diff_histogram``,
    ``k_sigmas`` of the ``frac_above_{k}sigma`` columns, and ``threads`` (ITK threads per registration;
    1 keeps results identical run to run; it is left out of the configuration hash).
    """

    _RUNTIME_PARAMS = ("threads",)

    def __init__(
        self,
        *,
        reference: str = "absolute",
        registration: str = "rigid",
        metric: str = "correlation",
        samples: int = 100_000,
        shrink: tuple[int, ...] = (4, 2, 1),
        smoothing: tuple[float, ...] = (2.0, 1.0, 0.5),
        iterations: int = 200,
        seed: int = 0,
        n_slabs: int = 4,
        n_bins: int = 32,
        k_sigmas: tuple[float, ...] = (1, 2, 3),
        threads: int = 1,
    ):
        self.reference = reference
        self.registration = registration
        self.metric = metric
        self.samples = samples
        self.shrink = shrink
        self.smoothing = smoothing
        self.iterations = iterations
        self.seed = seed
        self.n_slabs = n_slabs
        self.n_bins = n_bins
        self.k_sigmas = k_sigmas
        self.threads = threads

    def validate_params(self) -> None:
        self.check_param_rules({
            "reference": one_of(REFERENCE_MODES),
            "registration": one_of(TRANSFORMS),
            "metric": one_of(METRICS),
            "samples": int_in(100),
            "shrink": ParamRule("a non-empty tuple of ints >= 1", lambda v: isinstance(v, (tuple, list))
                                and len(v) > 0 and all(int_in(1).ok(s) for s in v)),
            "smoothing": ParamRule("a tuple of non-negative numbers, one per shrink level",
                                   lambda v: isinstance(v, (tuple, list)) and len(v) == len(self.shrink)
                                   and all(isinstance(s, (int, float)) and not BOOL.ok(s) and s >= 0 for s in v)),
            "iterations": int_in(1, 10000),
            "seed": int_in(0),
            "n_slabs": int_in(0, 64),
            "n_bins": int_in(2, 4096),
            "k_sigmas": ParamRule("a non-empty tuple of distinct positive numbers", _positive_tuple),
            "threads": int_in(1),
        })

    def key_column(self) -> str:
        return "pair_id"

    def feature_params(self) -> dict:
        params = super().feature_params()
        params["k_sigmas"] = [float(k) for k in params["k_sigmas"]]
        params["shrink"] = [int(s) for s in params["shrink"]]
        params["smoothing"] = [float(s) for s in params["smoothing"]]
        return params

    def table_name(self) -> str:
        """``diffstats3d_<reference>``, plus a configuration hash when other parameters are not the defaults."""
        base = f"{self.name}_{self.reference}"
        if self.feature_params() == type(self)(reference=self.reference).feature_params():
            return base
        return f"{base}_{self.config_hash()[:8]}"

    def column_names(self) -> list[str]:
        """The named float columns, in table order (``reg_iterations`` and the lists excepted)."""
        return [*REGISTRATION_COLUMNS, *slab_names(int(self.n_slabs), tuple(self.k_sigmas))]

    def output_schema(self) -> pa.Schema:
        fields = [("pair_id", pa.string()), ("source_sha256", pa.string()), ("reg_iterations", pa.int64())]
        fields += [(name, pa.float64()) for name in self.column_names()]
        fields.append(("diff_histogram", pa.list_(pa.float32(), int(self.n_bins))))
        fields.append(("reg_transform", pa.list_(pa.float32(), 12)))
        return pa.schema(fields)

    def units(self, store: Store, dataset: str) -> pa.Table:
        """``read_volume_pairs`` rows of this ``reference`` mode, plus the volumes' ``ref_path`` and ``cmp_path``."""
        pairs = read_volume_pairs(store, dataset, self.reference)
        volumes = read_volumes(store, dataset)
        paths = dict(zip(volumes.column("volume_id").to_pylist(), volumes.column("path").to_pylist(), strict=True))
        for side, column in (("ref_path", "reference_volume_id"), ("cmp_path", "comparison_volume_id")):
            pairs = pairs.append_column(side, pa.array([paths.get(v) for v in pairs.column(column).to_pylist()],
                                                       pa.string()))
        return pairs

    def _options(self) -> tuple[dict, dict]:
        registration = {
            "transform": self.registration, "metric": self.metric, "samples": int(self.samples),
            "shrink": tuple(int(s) for s in self.shrink), "smoothing": tuple(float(s) for s in self.smoothing),
            "iterations": int(self.iterations), "seed": int(self.seed), "threads": int(self.threads),
        }
        statistics = {"n_bins": int(self.n_bins), "k_sigmas": tuple(float(k) for k in self.k_sigmas),
                      "n_slabs": int(self.n_slabs)}
        return registration, statistics

    def _row_batch(self, pair_id: str, source: str, result: tuple) -> pa.Table:
        values, histogram, transform_row, iterations = result
        arrays = [pa.array([pair_id]), pa.array([source]), pa.array([int(iterations)], pa.int64())]
        arrays += [pa.array([float(values[name])], pa.float64()) for name in self.column_names()]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(histogram, pa.float32()), int(self.n_bins)))
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(transform_row, pa.float32()), 12))
        return pa.Table.from_arrays(arrays, schema=self.output_schema())

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        """One batch per pair (a row or a failure), pairs one after the other."""
        registration, statistics = self._options()
        reader = VolumeReader(store)
        columns = {name: pending.column(name).to_pylist() for name in (
            "pair_id", "dataset", "reference_volume_id", "comparison_volume_id", "source_sha256", "ref_path",
            "cmp_path")}
        for i, pair_id in enumerate(columns["pair_id"]):
            ref_id, cmp_id = columns["reference_volume_id"][i], columns["comparison_volume_id"][i]
            path = columns["cmp_path"][i]
            try:
                comparison = reader.load(cmp_id)
                path = columns["ref_path"][i]
                reference = comparison if ref_id == cmp_id else reader.load(ref_id)
                path = columns["cmp_path"][i]
                result = volume_pair_statistics(reference, comparison, is_first=ref_id == cmp_id,
                                                registration=registration, statistics=statistics)
            except ChronofeatError as exc:
                failure = Failure(key=pair_id, dataset=columns["dataset"][i], path=path or f"volume:{cmp_id}",
                                  stage=f"extract:{self.table_name()}", error_class=type(exc).__name__,
                                  message=str(exc))
                yield ExtractedBatch(None, [failure])
                continue
            del reference, comparison
            gc.collect()
            yield ExtractedBatch(self._row_batch(pair_id, columns["source_sha256"][i], result))


def has_volume_pairs(store: Store, dataset: str, reference: str) -> bool:
    """True when ``dataset`` has volume pairs of mode ``reference`` in ``store``."""
    if not table_exists(store, VOLUME_PAIRS_TABLE):
        return False
    try:
        return read_volume_pairs(store, dataset, reference).num_rows > 0
    except ChronofeatError:
        return False


_GENERIC_OPTIONS = frozenset({"extractor", "dataset", "store", "limit", "progress", "quiet", "rows_per_part", "json"})


def _diffstats3d_builder(options: dict) -> DiffStats3D:
    foreign = sorted(k for k, v in options.items()
                     if v not in (None, False) and k not in _GENERIC_OPTIONS | {"reference"})
    if foreign:
        raise ParameterError(
            f"Option(s) {', '.join('--' + k.replace('_', '-') for k in foreign)} do not apply to "
            "--extractor diffstats3d; it reads --reference (absolute|relative)."
        )
    return DiffStats3D(reference=options.get("reference") or "absolute")


register_cli_alias("diffstats3d", _diffstats3d_builder)
