"""``reproduce PAPER``: each seed paper's headline experiment as one command, on its demo stand-in.

A paper is a short list of steps — ingest the dataset, extract the features the paper used, run its
experiment — each of which is an ordinary chronofeat call (the same ``ingest_dataset``,
``run_extraction``, ``fit`` and ``train`` the command line uses), so every table and run it leaves in
the store is the same as one made by hand. Steps already done (an ingested dataset, an extracted
table, a trained network) are found and not repeated.

``Reproduction(store, paper)`` is an iterator of output lines (each step runs when its lines are asked
for); ``reproduce(store, paper)`` runs it to the end and returns the ``ReproduceResult``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from features.errors import ParameterError, WeightsError
from store.cores import usable_cores
from store.layout import Store

__all__ = ["PAPERS", "Paper", "ReproduceOptions", "ReproduceResult", "Reproduction", "reproduce"]


@dataclass(frozen=True)
class ReproduceOptions:
    """What a reproduction may be told: ``seeds`` (None: the paper's own count), ``device`` (auto|cpu|cuda),
    ``progress`` (progress bars on stderr)."""

    seeds: int | None = None
    device: str | None = None
    progress: bool = True


@dataclass
class ReproduceResult:
    """What a reproduction did: every line it showed, the runs it made, the features left out, its wall time."""

    paper: str
    lines: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """The lines ``cli.py reproduce`` prints, in order."""
        return list(self.lines)


Step = Callable[[Store, ReproduceOptions, ReproduceResult], Iterator[str]]


@dataclass(frozen=True)
class Paper:
    """One seed paper: its demo dataset, what its headline result is, and the steps that reproduce it."""

    name: str
    dataset: str
    title: str
    result: str  # the paper's table or figure this reproduces
    steps: tuple[tuple[str, Step], ...]  # (what the step does, the step)


# --- steps ---------------------------------------------------------------------------------------------------
def ingest_step(store: Store, options: ReproduceOptions, result: ReproduceResult, *, dataset: str) -> Iterator[str]:
    """Ingest the demo ``dataset`` (generated on first use; a second ingest finds every file present)."""
    from store.datasets import synthetic_notice
    from store.ingest import ingest_dataset

    summary = ingest_dataset(store, dataset, workers=min(2, usable_cores()))
    notice = synthetic_notice(store, dataset)
    if notice:
        yield notice
    yield summary.summary_line()


def extract_step(store: Store, options: ReproduceOptions, result: ReproduceResult, *, dataset: str, alias: str,
                 params: dict) -> Iterator[str]:
    """Extract ``alias`` with ``params`` on ``dataset``; pretrained weights that cannot be had leave it out."""
    from extractors import build_from_options
    from extractors.runner import run_extraction

    params = {**params, **({"device": options.device} if options.device and alias not in _NO_DEVICE else {})}
    try:
        extractor = build_from_options(alias, params)
        summary = run_extraction(extractor, store, dataset=dataset)
    except WeightsError as exc:
        result.left_out.append(alias)
        yield f"LEFT OUT {alias}: its pretrained weights cannot be had here.\n  {exc}"
        return
    done = "already there" if summary.written == 0 else f"{summary.written} rows in {summary.seconds:.1f} s"
    yield f"  {summary.table}: {done}"


_NO_DEVICE = frozenset({"diffstats", "sift_bovw", "orb_bovw", "kaze_bovw", "akaze_bovw", "brisk_bovw", "surf_bovw"})


def fit_step(store: Store, options: ReproduceOptions, result: ReproduceResult, **request) -> Iterator[str]:
    """``fit`` with the keyword options of a ``FitRequest``; the run ids are kept in ``result``."""
    from classifiers.fitting import FitRequest, fit

    if options.seeds is not None:
        request = {**request, "seeds": options.seeds}
    if options.device not in (None, "auto"):
        request = {**request, "device": options.device}
    outcome = fit(store, FitRequest(progress=options.progress, **request))
    ids = getattr(outcome, "run_ids", None) or [getattr(outcome, "run_id", None)]
    result.run_ids.extend(run_id for run_id in ids if run_id)
    yield from outcome.summary_lines()


def spine_step(store: Store, options: ReproduceOptions, result: ReproduceResult, *, dataset: str,
               seeds: int) -> Iterator[str]:
    """Train the Siamese network on ``dataset`` (or load it: a finished training is not repeated), then run the
    transfer protocol with it over ``seeds`` seeds (``options.seeds`` overrides)."""
    from classifiers.transfer import run_transfer
    from extractors.siamese import train_siamese

    device = options.device or "auto"
    trained = train_siamese(store, dataset, device=device, progress=options.progress)
    yield from trained.summary_lines()
    yield "== transfer: frozen Siamese vs scratch vs random vs strongly supervised, growing training sets"
    transfer = run_transfer(store, trained.artifact.short, dataset=dataset, seeds=options.seeds or seeds,
                            device=device, progress=options.progress)
    result.run_ids.append(transfer.run_id)
    yield from transfer.summary_lines()


def _bind(title: str, step: Callable, **kwargs) -> tuple[str, Step]:
    def bound(store: Store, options: ReproduceOptions, result: ReproduceResult) -> Iterator[str]:
        return step(store, options, result, **kwargs)

    return title, bound


PAPERS: dict[str, Paper] = {}


def _add(paper: Paper) -> None:
    PAPERS[paper.name] = paper


_add(Paper(
    name="chronomid", dataset="chronomid", title="ChronoMID: µCT of mouse tibiae, weekly; X-CNN vs baseline CNN",
    result="Table 1 (six variants: accuracy, balanced accuracy, s/epoch, parameters), and the absolute "
           "difference statistics + time with logistic regression as a feature baseline",
    steps=(
        _bind("ingest the demo dataset 'chronomid'", ingest_step, dataset="chronomid"),
        _bind("extract absolute difference statistics", extract_step, dataset="chronomid", alias="diffstats",
              params={"reference": "absolute"}),
        _bind("feature baseline: logistic regression on diffstats_absolute+time", fit_step, model="logistic",
              dataset="chronomid", features="diffstats_absolute+time"),
        _bind("Table 1: the six X-CNN / baseline CNN variants", fit_step, model="xcnn", dataset="chronomid"),
    ),
))

_add(Paper(
    name="crmo", dataset="crmo", title="CRMO poster: before/after MRI pairs, improved / persisted / regressed",
    result="the voting ensemble of Inception-v3 pair differences (logistic) and SIFT bags of visual words "
           "(RBF SVM, naive Bayes), member vs ensemble, error = 1 - F1 on train, dev (CV) and test",
    steps=(
        _bind("ingest the demo dataset 'crmo'", ingest_step, dataset="crmo"),
        _bind("extract Inception-v3 embeddings (pretrained)", extract_step, dataset="crmo", alias="inception",
              params={"weights": "hub"}),
        _bind("extract a SIFT bag of visual words, |V| = 50, vocabulary on training subjects", extract_step,
              dataset="crmo", alias="sift_bovw", params={"vocab_size": 50, "vocab_split": "train"}),
        # Naive Bayes says 0.999 / 0.001 on BoVW histograms: uncalibrated, the soft vote is naive Bayes alone
        _bind("the poster's voting ensemble, members calibrated (sigmoid)", fit_step, model="ensemble",
              dataset="crmo", calibrate="sigmoid"),
    ),
))

_add(Paper(
    name="impc", dataset="impc", title="IMPC mouse X-rays: hierarchical multi-label abnormalities from two views",
    result="Tables 4/5's comparison: DV only vs LAT only vs the multiview composite, per level, per-class ROC "
           "AUC mean ± std over 5 seeds (convolutional-autoencoder features, trained here)",
    steps=(
        _bind("ingest the demo dataset 'impc'", ingest_step, dataset="impc"),
        _bind("DV only vs LAT only vs multiview, hierarchical levels 1-3", fit_step, model="hierarchical",
              dataset="impc", compare_views="cae"),
    ),
))

_add(Paper(
    name="spine", dataset="spine", title="Longitudinal self-supervision: a Siamese CNN on spine MRI years apart",
    result="the same-vs-different-patient AUC of the embedding distance, then Fig. 8: frozen Siamese features vs "
           "scratch vs random vs strongly supervised over growing training sets (mean per-class accuracy, "
           "mean ± std over 2 seeds; --seeds 3 or more for tighter error bars)",
    steps=(
        _bind("ingest the demo dataset 'spine'", ingest_step, dataset="spine"),
        _bind("train the Siamese network on longitudinal pairs", spine_step, dataset="spine", seeds=2),
    ),
))


# --- running ----------------------------------------------------------------------------------------------
class Reproduction:
    """The reproduction of ``paper`` as an iterator of output lines; ``result`` is complete once exhausted."""

    def __init__(self, store: Store, paper: str, options: ReproduceOptions | None = None) -> None:
        if paper not in PAPERS:
            raise ParameterError(
                f"The 'paper' parameter of reproduce must be one of {sorted(PAPERS)}. Got {paper!r} instead."
            )
        self.store, self.paper, self.options = store, PAPERS[paper], options or ReproduceOptions()
        self.result = ReproduceResult(paper=paper)

    def __iter__(self) -> Iterator[str]:
        began = time.perf_counter()
        paper = self.paper
        yield from self._shown([f"reproduce {paper.name}: {paper.title}", f"reproduces: {paper.result}"])
        for number, (title, step) in enumerate(paper.steps, 1):
            yield from self._shown([f"== {number}/{len(paper.steps)} {title}"])
            yield from self._shown(step(self.store, self.options, self.result))
        self.result.seconds = time.perf_counter() - began
        yield from self._shown([f"reproduce {paper.name}: done in {self.result.seconds:.0f} s"])

    def _shown(self, lines) -> Iterator[str]:
        for line in lines:  # lazily: a step runs only as its lines are asked for
            self.result.lines.append(line)
            yield line


def reproduce(store: Store, paper: str, options: ReproduceOptions | None = None) -> ReproduceResult:
    """Run every step of ``paper`` (a key of ``PAPERS``) on ``store``; returns the ``ReproduceResult``."""
    run = Reproduction(store, paper, options)
    for _ in run:
        pass
    return run.result
