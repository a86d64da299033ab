"""Bag of visual words (CRMO poster): keypoint descriptors, a k-means vocabulary, word histograms.

``BoVW(descriptor="sift", vocab_size=50)`` is registered as ``bovw``; the CLI names ``sift_bovw``,
``orb_bovw``, ``surf_bovw``, ``kaze_bovw``, ``akaze_bovw`` and ``brisk_bovw`` build one from the
``extract`` options. Its table (``sift_bovw50``, ``orb_bovw500``...) holds one row per scan:
``histogram`` FLOAT[vocab_size] (L1-normalised word counts, optionally tf-idf weighted) and
``n_keypoints`` (0, with an all-zero histogram, when an image has no keypoint).

Steps (``prepare`` then ``transform``):

1. the dataset's descriptor table (``sift_descriptors``..., ``extractors.keypoints``) is brought up to
   date: every scan described once, in parallel processes, resumably, shared by all vocabulary sizes;
2. the vocabulary is fitted (MiniBatchKMeans) on descriptors sampled from the TRAINING subjects' scans
   only: an explicit subject list, or ``vocab_split="train"`` = every subject outside the held-out
   test set of ``store.vocabulary.dataset_subject_split`` (the rule the classifiers use for their
   test set). It is stored as an artifact named by its content hash; every part of the histogram
   table records that hash (``chronofeat.vocabulary``); a resumed run reuses the vocabulary its table
   was started with, and the same fit inputs find the vocabulary fitted before;
3. each scan's descriptors are assigned to their nearest words (binary descriptors are compared as
   unpacked bits, where Euclidean distance is Hamming distance) and counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from extractors._registry import register_cli_alias, register_extractor
from extractors.base import BOOL, ExtractedBatch, Extractor, ParamRule, int_in, one_of
from extractors.keypoints import (
    BINARY_DESCRIPTORS,
    DESCRIPTORS,
    KeypointDescriptors,
    check_descriptor_available,
    descriptor_vectors,
    read_descriptors,
)
from features.errors import (
    ChronofeatError,
    DatasetError,
    ParameterError,
    StoreError,
)
from store.failures import Failure
from store.layout import Store
from store.provenance import params_hash
from store.units import scan_units

__all__ = [
    "BoVW",
    "TrainingSubjects",
    "fit_centers",
    "nearest_words",
    "word_counts",
    "bag_of_words",
    "idf_weights",
    "sample_training_descriptors",
]

_BATCH = 256


# --- vocabulary and histograms (arrays in, arrays out) ----------------------------------------
def fit_centers(
    vectors: np.ndarray, vocab_size: int, *, seed: int = 0, batch_size: int | None = None, threads: int | None = 1
) -> np.ndarray:
    """``vocab_size`` k-means centres (float32) of ``vectors`` (n x d) by MiniBatchKMeans.

    ``batch_size`` defaults to ``max(16384, 3 * vocab_size)`` (capped at n): on 1M x 128 descriptors
    at k = 500 it fitted about as fast as 4096 and to a lower inertia, 1024 was slower and worse
    (bench/bovw.py). k-means++ seeds on ``3 * vocab_size`` points (scikit-learn's minimum advice;
    seeding on more took several times longer for no lower inertia). ``threads`` caps OpenMP/BLAS
    threads (None: all): one by default, because on a shared machine oversubscribed OpenMP made the
    fit up to 8x slower.
    """
    from sklearn.cluster import MiniBatchKMeans

    vectors = np.asarray(vectors, np.float32)
    if vectors.shape[0] < vocab_size:
        raise ParameterError(
            f"Only {vectors.shape[0]} descriptors were sampled, fewer than vocab_size={vocab_size} words; lower "
            "--vocab-size, raise sample_per_image, or fit on more training subjects."
        )
    batch = int(batch_size or min(vectors.shape[0], max(16384, 3 * vocab_size)))
    model = MiniBatchKMeans(
        n_clusters=int(vocab_size),
        batch_size=batch,
        init="k-means++",
        init_size=min(vectors.shape[0], 3 * int(vocab_size)),
        n_init=1,
        max_iter=100,
        max_no_improvement=10,
        reassignment_ratio=0.01,
        compute_labels=False,  # labelling every input afterwards would cost more than the fit itself
        random_state=int(seed),
    )
    with threadpool_limits(limits=threads):
        model.fit(vectors)
    return model.cluster_centers_.astype(np.float32)


def nearest_words(vectors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``centers`` (k x d) for each of ``vectors`` (n x d), Euclidean."""
    vectors = np.asarray(vectors, np.float32)
    centers = np.asarray(centers, np.float32)
    if vectors.shape[0] == 0:
        return np.zeros(0, np.int64)
    # ||x - c||^2 = ||c||^2 - 2 x.c + ||x||^2: the argmin over c needs only the first two terms.
    scores = (centers * centers).sum(axis=1)[None, :] - 2.0 * (vectors @ centers.T)
    return scores.argmin(axis=1)


def word_counts(vectors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """How many of ``vectors`` (n x d) fall nearest to each of ``centers`` (k x d), as float64 (k,)."""
    return np.bincount(nearest_words(vectors, centers), minlength=centers.shape[0]).astype(np.float64)


def bag_of_words(counts: np.ndarray, idf: np.ndarray | None = None) -> np.ndarray:
    """L1-normalised histogram (float32) of word ``counts``, weighted by ``idf`` first when given.

    All-zero counts (no keypoint) give the all-zero histogram.
    """
    weights = np.asarray(counts, np.float64)
    if idf is not None:
        weights = weights * np.asarray(idf, np.float64)
    total = weights.sum()
    return (weights / total if total > 0 else weights).astype(np.float32)


def idf_weights(document_words: list[np.ndarray], vocab_size: int) -> np.ndarray:
    """Smoothed inverse document frequency ``ln((1 + N) / (1 + df)) + 1`` of each word over N images
    (``document_words``: the word indices of each image)."""
    df = np.zeros(vocab_size, np.float64)
    for words in document_words:
        df[np.unique(words)] += 1
    n = len(document_words)
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def _rng_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(params_hash({"key": key}, length=16), 16)])


def sample_training_descriptors(
    store: Store,
    table: str,
    descriptor: str,
    training: dict[str, str],
    *,
    sample_per_image: int,
    seed: int,
) -> tuple[list[np.ndarray], list[str]]:
    """At most ``sample_per_image`` descriptors of each TRAINING scan, read from the descriptor ``table``.

    ``training`` = {scan_id: source_sha256} of the training subjects' scans: nothing else is read.
    Returns (one array per scan that has descriptors, those scan ids). The sample of a scan is drawn
    by a generator seeded with ``seed`` and its scan id, so it does not depend on order or workers.
    """
    sampled: list[np.ndarray] = []
    scan_ids: list[str] = []
    for scan_id, raw in read_descriptors(store, table, descriptor, training):
        if raw.shape[0] > sample_per_image:
            rows = np.sort(_rng_for(seed, scan_id).choice(raw.shape[0], size=sample_per_image, replace=False))
            raw = raw[rows]
        sampled.append(raw)
        scan_ids.append(scan_id)
    return sampled, scan_ids


# --- the extractor ------------------------------------------------------------------------------
class TrainingSubjects(NamedTuple):
    """The subjects a vocabulary is fitted on (sorted keys) and the rule that chose them, in words."""

    keys: tuple[str, ...]
    rule: str


def _subject_keys_or_none(value) -> bool:
    return value is None or (
        isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(s, str) and s for s in value)
    )


def _open_unit_fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


@register_extractor("bovw")
class BoVW(Extractor):
    """Bag-of-visual-words histograms per scan over a vocabulary fitted on training subjects only.

    Parameters: ``descriptor`` (sift, orb, surf, kaze, akaze, brisk), ``vocab_size`` (words, >= 2),
    ``max_keypoints`` per image, ``tfidf`` (weight words by inverse document frequency over the
    training images), ``vocab_subjects`` (explicit training subject keys) or ``vocab_split="train"``
    (the subjects outside ``dataset_subject_split(..., test_fraction, split_seed)``'s test set),
    ``sample_per_image`` descriptors per training image for fitting, ``seed`` (sampling, k-means),
    ``workers`` processes for describing images (None: all cores) and ``progress``; the last two do
    not change the features and are left out of the configuration hash.
    """

    _RUNTIME_PARAMS = ("workers", "progress")

    def __init__(
        self,
        *,
        descriptor: str = "sift",
        vocab_size: int = 50,
        max_keypoints: int = 1000,
        tfidf: bool = False,
        vocab_subjects: tuple[str, ...] | None = None,
        vocab_split: str | None = "train",
        test_fraction: float = 0.3,
        split_seed: int = 0,
        sample_per_image: int = 100,
        seed: int = 0,
        workers: int | None = None,
        progress: bool = True,
    ):
        self.descriptor = descriptor
        self.vocab_size = vocab_size
        self.max_keypoints = max_keypoints
        self.tfidf = tfidf
        self.vocab_subjects = vocab_subjects
        self.vocab_split = vocab_split
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.sample_per_image = sample_per_image
        self.seed = seed
        self.workers = workers
        self.progress = progress

    # --- configuration ---------------------------------------------------------------------------
    def validate_params(self) -> None:
        self.check_param_rules({
            "descriptor": one_of(DESCRIPTORS),
            "vocab_size": int_in(2),
            "max_keypoints": int_in(1),
            "tfidf": BOOL,
            "vocab_split": ParamRule("'train' or None", lambda v: v in ("train", None)),
            "vocab_subjects": ParamRule("a non-empty tuple of subject keys or None", _subject_keys_or_none),
        })
        if (self.vocab_subjects is None) == (self.vocab_split is None):
            raise ParameterError(
                f"{type(self).__name__} needs exactly one source of training subjects for its vocabulary: "
                f"vocab_subjects (a list of subject keys) or vocab_split='train'. Got vocab_subjects="
                f"{self.vocab_subjects!r} and vocab_split={self.vocab_split!r}. A vocabulary fitted on every subject "
                "would leak the test set."
            )
        self.check_param_rules({
            "test_fraction": ParamRule("a float in (0, 1)", _open_unit_fraction),
            "split_seed": int_in(),
            "sample_per_image": int_in(1),
            "seed": int_in(),
            "workers": int_in(1, optional=True),
            "progress": BOOL,
        })

    def feature_params(self) -> dict:
        params = super().feature_params()
        if params.get("vocab_subjects") is not None:
            params["vocab_subjects"] = sorted(params["vocab_subjects"])
        return params

    def table_name(self) -> str:
        """``<descriptor>_bovw<vocab_size>``, plus a configuration hash when other parameters differ
        from their defaults (e.g. ``sift_bovw50_1a2b3c4d`` with tf-idf)."""
        base = f"{self.descriptor}_bovw{self.vocab_size}"
        defaults = type(self)(descriptor=self.descriptor, vocab_size=self.vocab_size).feature_params()
        if self.feature_params() == defaults:
            return base
        return f"{base}_{self.config_hash()[:8]}"

    def output_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("scan_id", pa.string()),
                ("source_sha256", pa.string()),
                ("histogram", pa.list_(pa.float32(), int(self.vocab_size))),
                ("n_keypoints", pa.int32()),
            ]
        )

    def provenance(self) -> dict:
        vocabulary = getattr(self, "vocabulary_", None)
        if vocabulary is None:
            raise ChronofeatError(
                f"{type(self).__name__} has no vocabulary yet; prepare(store, pending) fits or loads it."
            )
        return {
            "vocabulary": vocabulary.sha256,
            "vocabulary_descriptor": vocabulary.descriptor,
            "vocabulary_subjects": len(vocabulary.subjects),
            "vocabulary_subject_rule": vocabulary.meta.get("subject_rule"),
            "descriptor_table": self.descriptors_.table_name(),
        }

    def _descriptors(self) -> KeypointDescriptors:
        return KeypointDescriptors(descriptor=self.descriptor, max_keypoints=self.max_keypoints,
                                   workers=self.workers, progress=self.progress)

    def upstream_extractors(self) -> list[Extractor]:
        """Extractors whose tables ``prepare`` needs complete: the keypoint-descriptor table."""
        return [self._descriptors()]

    # --- work ------------------------------------------------------------------------------------
    def units(self, store: Store, dataset: str) -> pa.Table:
        return scan_units(store, dataset)

    def _training_subjects(self, store: Store, dataset: str, scans: pa.Table) -> TrainingSubjects:
        from store.subjects import dataset_subject_split

        present = set(scans.column("subject").to_pylist())
        if self.vocab_subjects is not None:
            wanted = tuple(sorted(set(self.vocab_subjects)))
            missing = [s for s in wanted if s not in present]
            if missing:
                raise DatasetError(
                    f"{len(missing)} of the {len(wanted)} vocabulary subjects are not subjects of dataset {dataset!r} "
                    f"(e.g. {missing[0]!r}). Subject keys are the pseudonyms in scans.subject: list them with "
                    f"'python cli.py sql \"SELECT DISTINCT subject FROM scans WHERE dataset = '{dataset}'\"'."
                )
            return TrainingSubjects(wanted, "explicit subject list")
        split = dataset_subject_split(
            store, dataset, test_fraction=float(self.test_fraction), seed=int(self.split_seed)
        )
        rule = (
            f"vocab_split=train: not in the held-out test set ({split.rule}; "
            f"test_fraction={split.test_fraction}, seed={split.seed})"
        )
        return TrainingSubjects(split.train, rule)

    def prepare(self, store: Store, pending: pa.Table) -> None:
        """Refuse an unavailable descriptor, describe every scan once (descriptor table), then load or
        fit the vocabulary on the training subjects' descriptors."""
        from extractors.runner import run_extraction

        self.validate_params()
        check_descriptor_available(self.descriptor)  # SURF without nonfree stops here, before any pixel
        datasets = set(pending.column("dataset").to_pylist())
        if len(datasets) != 1:
            raise DatasetError(f"BoVW prepares one dataset at a time; the pending scans come from {sorted(datasets)}.")
        dataset = datasets.pop()
        self.descriptors_ = self._descriptors()
        run_extraction(self.descriptors_, store, dataset=dataset, progress=bool(self.progress))
        started = self._started_vocabulary(store)
        self.vocabulary_ = started if started is not None else self._vocabulary(store, dataset)

    def _started_vocabulary(self, store: Store):
        """The vocabulary the rows of a table already started were computed with (None for a new table)."""
        from store.tables import table_kv_metadata
        from store.vocabulary import load_vocabulary

        started = table_kv_metadata(store, self.table_name()).get("chronofeat.vocabulary")
        if not started:
            return None
        try:
            return load_vocabulary(store, started)
        except StoreError:
            raise StoreError(
                f"Table {self.table_name()!r} was computed with vocabulary {started[:12]}, which is no longer in "
                f"{store.artifacts_dir / 'vocabularies'}. Restore it, or drop the table to recompute every row."
            ) from None

    def _vocabulary(self, store: Store, dataset: str):
        """The vocabulary fitted before on the same inputs, else one fitted now and saved as an artifact."""
        from store.vocabulary import find_vocabulary

        scans = scan_units(store, dataset)
        subjects = self._training_subjects(store, dataset, scans)
        chosen = set(subjects.keys)
        training = {
            scan_id: sha
            for scan_id, subject, sha in zip(scans.column("scan_id").to_pylist(), scans.column("subject").to_pylist(),
                                             scans.column("source_sha256").to_pylist(), strict=True)
            if subject in chosen
        }
        if not training:
            raise DatasetError(
                f"The vocabulary's training subjects have no scans in dataset {dataset!r}; nothing to fit on."
            )
        fit_key = params_hash(
            {
                "dataset": dataset,
                "descriptor": self.descriptor,
                "vocab_size": int(self.vocab_size),
                "max_keypoints": int(self.max_keypoints),
                "sample_per_image": int(self.sample_per_image),
                "seed": int(self.seed),
                "subjects": list(subjects.keys),
                "pixels": sorted(training.values()),
            },
            length=64,
        )
        found = find_vocabulary(store, fit_key)
        if found is not None:
            return found
        return self._fit_vocabulary(store, dataset, subjects, training, fit_key)

    def _fit_vocabulary(self, store: Store, dataset: str, subjects: TrainingSubjects, training: dict[str, str],
                        fit_key: str):
        """Fit k-means centres (and idf weights) on a sample of the ``training`` scans' descriptors; save them."""
        from store.vocabulary import save_vocabulary

        started_at = time.perf_counter()
        sampled, scan_ids = sample_training_descriptors(
            store, self.descriptors_.table_name(), self.descriptor, training,
            sample_per_image=int(self.sample_per_image), seed=int(self.seed),
        )
        vectors = [descriptor_vectors(raw, self.descriptor) for raw in sampled]
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
        centers = fit_centers(stacked, int(self.vocab_size), seed=int(self.seed))
        with threadpool_limits(limits=1):
            idf = idf_weights([nearest_words(v, centers) for v in vectors], int(self.vocab_size))
        meta = {
            "descriptor": self.descriptor,
            "binary": self.descriptor in BINARY_DESCRIPTORS,
            "dataset": dataset,
            "subjects": list(subjects.keys),
            "subject_rule": subjects.rule,
            "n_images": len(scan_ids),
            "n_descriptors": int(stacked.shape[0]),
            "descriptor_table": self.descriptors_.table_name(),
            "fit_key": fit_key,
            "params": {k: v for k, v in self.feature_params().items() if k != "tfidf"},
            "fit_seconds": round(time.perf_counter() - started_at, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return save_vocabulary(store, centers, idf, meta=meta)

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        vocabulary = getattr(self, "vocabulary_", None)
        if vocabulary is None:
            raise ChronofeatError("BoVW.transform needs a vocabulary: call prepare(store, pending) first.")
        centers = vocabulary.centers
        idf = vocabulary.idf if self.tfidf else None
        source = self.descriptors_.table_name()
        scan_ids = pending.column("scan_id").to_pylist()
        shas = pending.column("source_sha256").to_pylist()
        info = dict(zip(scan_ids, zip(pending.column("dataset").to_pylist(), pending.column("path").to_pylist(), shas,
                                      strict=True), strict=True))
        for start in range(0, len(scan_ids), _BATCH):
            wanted = dict(zip(scan_ids[start : start + _BATCH], shas[start : start + _BATCH], strict=True))
            rows: dict[str, list[Any]] = {"scan_id": [], "source_sha256": [], "histogram": [], "n_keypoints": []}
            with threadpool_limits(limits=1):  # small matrix products: threads only add contention
                for scan_id, raw in read_descriptors(store, source, self.descriptor, wanted):
                    rows["scan_id"].append(scan_id)
                    rows["source_sha256"].append(wanted[scan_id])
                    counts = word_counts(descriptor_vectors(raw, self.descriptor), centers)
                    rows["histogram"].append(bag_of_words(counts, idf))
                    rows["n_keypoints"].append(raw.shape[0])
            done = set(rows["scan_id"])
            failures = [
                Failure(key=k, dataset=info[k][0], path=info[k][1], stage=f"extract:{self.table_name()}",
                        error_class="InputError",
                        message=f"No descriptors for this image in table {source!r}: it could not be read or described "
                                f"(see that stage in the failures table); fix the file and run the extraction again.")
                for k in wanted if k not in done
            ]
            flat = np.asarray(rows["histogram"], np.float32).reshape(-1)
            table = pa.Table.from_arrays(
                [
                    pa.array(rows["scan_id"], pa.string()),
                    pa.array(rows["source_sha256"], pa.string()),
                    pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), int(self.vocab_size)),
                    pa.array(rows["n_keypoints"], pa.int32()),
                ],
                schema=self.output_schema(),
            )
            yield ExtractedBatch(table, failures)


# --- command-line aliases ---------------------------------------------------------------------
_GENERIC_OPTIONS = frozenset({"extractor", "dataset", "store", "limit", "progress", "quiet", "rows_per_part", "json"})
_BOVW_OPTIONS = frozenset({"vocab_size", "vocab_subjects", "vocab_split", "workers"})


def _bovw_builder(descriptor: str):
    def build(options: dict) -> BoVW:
        from store.subjects import read_subject_list

        alias = f"{descriptor}_bovw"
        foreign = sorted(
            k for k, v in options.items() if v not in (None, False) and k not in _BOVW_OPTIONS | _GENERIC_OPTIONS
        )
        if foreign:
            raise ParameterError(
                f"Option(s) {', '.join('--' + k.replace('_', '-') for k in foreign)} do not apply to --extractor "
                f"{alias}; it reads --vocab-size, --vocab-subjects FILE or --vocab-split train, and --workers."
            )
        subjects_file = options.get("vocab_subjects")
        split = options.get("vocab_split")
        if subjects_file is not None and split is not None:
            raise ParameterError(
                f"--vocab-subjects and --vocab-split both choose the vocabulary's training subjects for {alias}; "
                "give one."
            )
        vocab_size = options.get("vocab_size")
        params: dict[str, Any] = {"descriptor": descriptor, "vocab_size": 50 if vocab_size is None else vocab_size}
        if subjects_file is not None:
            params["vocab_subjects"] = tuple(sorted(read_subject_list(subjects_file)))
            params["vocab_split"] = None
        elif split is not None:
            params["vocab_split"] = split
        if options.get("workers") is not None:
            params["workers"] = options["workers"]
        if options.get("progress") is not None:
            params["progress"] = bool(options["progress"])
        return BoVW(**params)

    return build


for _descriptor in DESCRIPTORS:
    register_cli_alias(f"{_descriptor}_bovw", _bovw_builder(_descriptor))
