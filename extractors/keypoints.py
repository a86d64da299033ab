"""OpenCV keypoint descriptors per scan: the raw material of bags of visual words.

``KeypointDescriptors(descriptor="sift")`` is registered as ``descriptors``; its table
``sift_descriptors`` (``orb_descriptors``...) holds, per scan, the descriptors of its strongest
``max_keypoints`` keypoints as a list of fixed-size arrays (SIFT ``UTINYINT[128][]``, ORB
``UTINYINT[32][]``, KAZE ``FLOAT[64][]``...) and ``n_keypoints``. It is computed once per dataset and
descriptor, in ``workers`` processes, resumably; every vocabulary size and weighting of
``extractors.bovw`` reuses it instead of describing the images again.

Descriptors need 8-bit images: each image is mapped through its robust 1st-99th percentile window
to 0..255 (colour averaged to grey). SIFT's values are integers 0..255 in OpenCV (stored losslessly as
uint8), ORB/AKAZE/BRISK are packed bits (uint8), KAZE/SURF are float32. SURF exists only in OpenCV
builds with the nonfree modules; elsewhere it is refused before any work, saying how to get one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache

import numpy as np
import pyarrow as pa

from extractors._registry import register_extractor
from extractors._workers import ordered_map
from extractors.base import BOOL, ExtractedBatch, Extractor, int_in, one_of
from features.errors import (
    BackendUnavailableError,
    ChronofeatError,
    InputError,
    ParameterError,
)
from store.cores import usable_cores
from store.failures import Failure
from store.layout import Store
from store.units import scan_units

__all__ = [
    "DESCRIPTORS",
    "BINARY_DESCRIPTORS",
    "KeypointDescriptors",
    "create_detector",
    "check_descriptor_available",
    "descriptor_layout",
    "to_uint8",
    "describe",
    "descriptor_vectors",
    "describe_images",
    "read_descriptors",
]

DESCRIPTORS = ("sift", "orb", "surf", "kaze", "akaze", "brisk")
BINARY_DESCRIPTORS = frozenset({"orb", "akaze", "brisk"})
_FACTORY = {"sift": "SIFT", "orb": "ORB", "surf": "SURF", "kaze": "KAZE", "akaze": "AKAZE", "brisk": "BRISK"}
_UINT8 = frozenset({"sift", "orb", "akaze", "brisk"})
_BATCH = 64
# describe(): descriptors whose detectAndCompute gives exactly the values of detect, keep the strongest
# max_keypoints, compute (checked byte for byte on OpenCV 5.0: camera(), bench/bovw.py's images, CRMO demo
# slices). Left on the two-step path: KAZE (its one-pass orientations and values differ), BRISK (equal,
# but slower: it describes every keypoint before the strongest are kept), SURF (not in this build).
_ONE_PASS = frozenset({"sift", "orb", "akaze"})
# ...of which a keypoint's one-pass values do not depend on the other keypoints kept, so the strongest
# rows can be kept (SIFT: when the kept keypoints include octave -1, see describe). ORB, which with
# nfeatures has more than max_keypoints only on ties in response, describes the kept ones again.
_KEYPOINT_LOCAL = frozenset({"sift", "akaze"})

# --- OpenCV detectors ---------------------------------------------------------------------------
def _nonfree_message(descriptor: str, detail: str) -> str:
    import cv2

    said = detail.strip().splitlines()[-1] if detail.strip() else "not available"
    return (
        f"The {descriptor.upper()} descriptor is patented and the installed OpenCV {cv2.__version__} was built "
        f"without its nonfree modules, so it cannot be used here (OpenCV says: {said}). To use it, build "
        "opencv-contrib-python from source with the nonfree modules, e.g. 'ENABLE_CONTRIB=1 "
        "CMAKE_ARGS=\"-DOPENCV_ENABLE_NONFREE=ON\" pip install --no-binary opencv-contrib-python "
        "opencv-contrib-python' (after uninstalling the prebuilt opencv wheels), or choose sift, kaze, orb, "
        "akaze or brisk instead."
    )


def create_detector(descriptor: str, *, max_keypoints: int = 1000):
    """The OpenCV feature detector/descriptor for ``descriptor`` (found in cv2 or cv2.xfeatures2d).

    SURF on an OpenCV build without nonfree modules raises ``BackendUnavailableError`` saying how to
    get such a build.
    """
    import cv2

    if descriptor not in _FACTORY:
        raise ParameterError(
            f"The 'descriptor' parameter must be a str among {list(DESCRIPTORS)}. Got {descriptor!r} instead."
        )
    name = f"{_FACTORY[descriptor]}_create"
    factory = getattr(cv2, name, None) or getattr(getattr(cv2, "xfeatures2d", None), name, None)
    if factory is None:
        if descriptor == "surf":
            raise BackendUnavailableError(_nonfree_message(descriptor, "cv2.xfeatures2d has no SURF_create"))
        raise BackendUnavailableError(
            f"The installed OpenCV {cv2.__version__} has no {name} (neither cv2 nor cv2.xfeatures2d); install "
            "opencv-contrib-python-headless."
        )
    try:
        if descriptor in ("sift", "orb"):
            return factory(nfeatures=int(max_keypoints))
        return factory()
    except cv2.error as exc:
        if descriptor == "surf":
            raise BackendUnavailableError(_nonfree_message(descriptor, str(exc))) from None
        raise BackendUnavailableError(f"OpenCV could not create the {descriptor} detector: {exc}") from None


def check_descriptor_available(descriptor: str) -> None:
    """Raise (``ParameterError`` / ``BackendUnavailableError``) unless ``descriptor`` can run here."""
    create_detector(descriptor)


@lru_cache(maxsize=16)
def descriptor_layout(descriptor: str) -> tuple[int, np.dtype]:
    """(values per descriptor as stored, storage dtype): SIFT (128, uint8), ORB (32, uint8), KAZE (64, float32)..."""
    detector = create_detector(descriptor)
    return int(detector.descriptorSize()), np.dtype(np.uint8 if descriptor in _UINT8 else np.float32)


# --- arrays in, arrays out -----------------------------------------------------------------------
def to_uint8(image: np.ndarray, *, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Greyscale uint8 of ``image``: its ``low``-``high`` percentile window mapped to 0..255, clipped.

    Colour images are averaged over channels first; a flat image gives zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=2)
    if image.ndim != 2:
        raise InputError(f"Expected a greyscale (H, W) or colour (H, W, C) image; got shape {image.shape}.")
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.clip((image - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _lowest_sift_octave(keypoints) -> int:
    """The lowest octave of SIFT keypoints (OpenCV packs it, a signed byte, in ``octave``'s low 8 bits)."""
    return min((k.octave & 255) - 256 * ((k.octave & 255) >= 128) for k in keypoints)


def describe(image: np.ndarray, descriptor: str, *, max_keypoints: int = 1000, detector=None) -> np.ndarray:
    """Descriptors of the strongest ``max_keypoints`` keypoints of ``image``, ``(n, width)`` in the
    storage dtype of ``descriptor_layout`` (``n`` = 0 when the image has no keypoint).

    ``detector`` reuses one made by ``create_detector``.
    """
    detector = detector if detector is not None else create_detector(descriptor, max_keypoints=max_keypoints)
    width, dtype = descriptor_layout(descriptor)
    grey = to_uint8(image)
    values = None
    if descriptor in _ONE_PASS:
        # One pass (one scale space) instead of detect + compute: the same values, checked byte for byte.
        keypoints, values = detector.detectAndCompute(grey, None)
        if len(keypoints) > max_keypoints:
            strongest = sorted(range(len(keypoints)), key=lambda i: -keypoints[i].response)[:max_keypoints]
            keypoints = [keypoints[i] for i in strongest]
            values = values[strongest] if descriptor in _KEYPOINT_LOCAL else None
        if keypoints and (values is None or (descriptor == "sift" and _lowest_sift_octave(keypoints) > -1)):
            # compute() builds SIFT's pyramid from the given keypoints' lowest octave, detectAndCompute()
            # from octave -1 (the image upsampled 2x): without such a keypoint, describe as compute() does.
            keypoints, values = detector.compute(grey, keypoints)
    else:
        keypoints = detector.detect(grey, None)
        if len(keypoints) > max_keypoints:
            keypoints = sorted(keypoints, key=lambda k: -k.response)[:max_keypoints]
        if keypoints:
            keypoints, values = detector.compute(grey, keypoints)
    if values is None or len(values) == 0:
        return np.zeros((0, width), dtype)
    if dtype == np.uint8 and values.dtype != np.uint8:
        values = np.clip(np.rint(values), 0, 255)  # OpenCV's SIFT values are already integers 0..255
    return np.ascontiguousarray(values, dtype=dtype)


def descriptor_vectors(raw: np.ndarray, descriptor: str) -> np.ndarray:
    """Descriptors as float32 vectors for k-means: binary ones unpacked to 0/1 bits (so Euclidean
    distance is Hamming distance), the others as they are."""
    if descriptor in BINARY_DESCRIPTORS:
        return np.unpackbits(np.asarray(raw, np.uint8), axis=1).astype(np.float32)
    return np.asarray(raw, np.float32)


# --- processes ------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _pixel_reader(root: str, dataset: str):
    from store.layout import open_store
    from store.pixels import PixelReader

    return PixelReader(open_store(root, create=False), dataset)


@lru_cache(maxsize=8)
def _cached_detector(descriptor: str, max_keypoints: int):
    return create_detector(descriptor, max_keypoints=max_keypoints)


def _read_pixels(root: str, dataset: str, path: str, frame: int) -> np.ndarray:
    return _pixel_reader(root, dataset).read(path, frame)


def _describe_task(task: tuple) -> tuple:
    """One image: ``("ok", key, descriptors)`` or ``("fail", key, error class, message)``.

    ``task`` = (key, source, descriptor, max_keypoints) where ``source`` is an array or a
    (store root, dataset, path, frame) tuple read through ``store.pixels``.
    """
    import cv2

    key, source, descriptor, max_keypoints = task
    try:
        image = source if isinstance(source, np.ndarray) else _read_pixels(*source)
        raw = describe(
            image, descriptor, max_keypoints=max_keypoints, detector=_cached_detector(descriptor, max_keypoints)
        )
    except (ChronofeatError, cv2.error) as exc:
        return ("fail", key, type(exc).__name__, str(exc))
    return ("ok", key, raw)


def _progress(iterable, *, total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, mininterval=0.5)


def describe_images(
    images: Iterable[np.ndarray],
    descriptor: str,
    *,
    max_keypoints: int = 1000,
    workers: int = 1,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[np.ndarray]:
    """Descriptors of each of ``images`` (arrays), in order, computed in ``workers`` processes."""
    check_descriptor_available(descriptor)
    tasks = ((str(i), image, descriptor, max_keypoints) for i, image in enumerate(images))
    for result in _progress(ordered_map(_describe_task, tasks, workers), total=total,
                            desc=f"{descriptor} descriptors", enabled=progress):
        if result[0] == "fail":
            raise InputError(f"Image {result[1]} could not be described: {result[3]}")
        yield result[2]


# --- the descriptor table ----------------------------------------------------------------------
def _descriptor_list_type(descriptor: str) -> pa.DataType:
    width, dtype = descriptor_layout(descriptor)
    return pa.list_(pa.list_(pa.uint8() if dtype == np.uint8 else pa.float32(), width))


@register_extractor("descriptors")
class KeypointDescriptors(Extractor):
    """Per scan, the OpenCV descriptors of its strongest keypoints (see the module docstring).

    Parameters: ``descriptor`` (sift, orb, surf, kaze, akaze, brisk), ``max_keypoints`` per image,
    ``workers`` processes (None: all cores) and ``progress``; the last two do not change the table
    and are left out of the configuration hash.
    """

    _RUNTIME_PARAMS = ("workers", "progress")

    def __init__(self, *, descriptor: str = "sift", max_keypoints: int = 1000, workers: int | None = None,
                 progress: bool = True):
        self.descriptor = descriptor
        self.max_keypoints = max_keypoints
        self.workers = workers
        self.progress = progress

    def validate_params(self) -> None:
        self.check_param_rules({
            "descriptor": one_of(DESCRIPTORS),
            "max_keypoints": int_in(1),
            "workers": int_in(1, optional=True),
            "progress": BOOL,
        })

    def table_name(self) -> str:
        """``<descriptor>_descriptors``, plus a configuration hash when ``max_keypoints`` is not 1000."""
        base = f"{self.descriptor}_descriptors"
        return base if self.max_keypoints == 1000 else f"{base}_{self.config_hash()[:8]}"

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("scan_id", pa.string()),
                ("source_sha256", pa.string()),
                ("n_keypoints", pa.int32()),
                ("descriptors", _descriptor_list_type(self.descriptor)),
            ]
        )

    def units(self, store: Store, dataset: str) -> pa.Table:
        return scan_units(store, dataset)

    def prepare(self, store: Store, pending: pa.Table) -> None:
        """Refuse a descriptor this OpenCV cannot compute (SURF without nonfree) before any pixel is read."""
        self.validate_params()
        check_descriptor_available(self.descriptor)

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        width, dtype = descriptor_layout(self.descriptor)
        value_type = pa.uint8() if dtype == np.uint8 else pa.float32()
        root = str(store.root)
        scan_ids = pending.column("scan_id").to_pylist()
        datasets = pending.column("dataset").to_pylist()
        paths = pending.column("path").to_pylist()
        info = {
            k: (d, p, s)
            for k, d, p, s in zip(scan_ids, datasets, paths, pending.column("source_sha256").to_pylist(), strict=True)
        }
        tasks = (
            (scan_id, (root, dataset, path, int(frame or 0)), self.descriptor, int(self.max_keypoints))
            for scan_id, dataset, path, frame in zip(
                scan_ids, datasets, paths, pending.column("frame").to_pylist(), strict=True
            )
        )
        keys: list[str] = []
        arrays: list[np.ndarray] = []
        failures: list[Failure] = []

        def batch() -> ExtractedBatch:
            nonlocal keys, arrays, failures
            counts = np.array([a.shape[0] for a in arrays], np.int32)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, dtype)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, value_type), width)
            table = pa.Table.from_arrays(
                [
                    pa.array(keys, pa.string()),
                    pa.array([info[k][2] for k in keys], pa.string()),
                    pa.array(counts, pa.int32()),
                    pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner),
                ],
                schema=self.output_schema(),
            )
            out = ExtractedBatch(table, failures)
            keys, arrays, failures = [], [], []
            return out

        workers = int(self.workers or usable_cores())
        for result in ordered_map(_describe_task, tasks, workers, batch_size="auto"):
            if result[0] == "fail":
                dataset, path, _ = info[result[1]]
                failures.append(Failure(key=result[1], dataset=dataset, path=path, stage=f"extract:{self.table_name()}",
                                        error_class=result[2], message=result[3]))
            else:
                keys.append(result[1])
                arrays.append(result[2])
            if len(keys) + len(failures) >= _BATCH:
                yield batch()
        if keys or failures:
            yield batch()


def read_descriptors(
    store: Store, table: str, descriptor: str, wanted: dict[str, str], *, chunk: int = 256
) -> Iterator[tuple[str, np.ndarray]]:
    """``(scan_id, descriptors (n, width))`` from ``table`` for each scan of ``wanted`` = {scan_id:
    source_sha256} whose row has that pixel hash; scans without such a row are not yielded.

    Read through DuckDB ``chunk`` scans at a time, so memory stays bounded on large tables.
    """
    from store.sql import connect

    width, dtype = descriptor_layout(descriptor)
    ids = list(wanted)
    con = connect(store)
    try:
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            rows = con.sql(
                f'SELECT scan_id, source_sha256, descriptors FROM "{table}" WHERE scan_id IN (SELECT unnest(?))',
                params=[part],
            ).to_arrow_table()
            scan_col = rows.column("scan_id").to_pylist()
            sha_col = rows.column("source_sha256").to_pylist()
            lists = rows.column("descriptors").combine_chunks()
            offsets = lists.offsets.to_numpy()
            values = lists.values.flatten().to_numpy(zero_copy_only=False)
            found = {}
            for i, (scan_id, sha) in enumerate(zip(scan_col, sha_col, strict=True)):
                if wanted.get(scan_id) == sha:
                    found[scan_id] = (
                        values[offsets[i] * width : offsets[i + 1] * width].reshape(-1, width).astype(dtype, copy=False)
                    )
            for scan_id in part:
                if scan_id in found:
                    yield scan_id, found[scan_id]
    finally:
        con.close()
