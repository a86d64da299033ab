"""The main job on the built-in demo data, end to end: ingest, extract features, fit, show a result.

This is what ``python3 cli.py demo`` runs. It must end in a fitted result even without internet:
features that need pretrained weights which cannot be had are left out, said plainly with how to
add them, and the rest goes on. (An explicit ``extract --extractor inception`` still fails fast.)

``run_demo(store)`` runs every step and returns a ``DemoResult``. A caller that shows each line as
soon as it is known (the command line: the demo takes a while) iterates a ``Demo`` instead and
reads ``Demo.result`` afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from features.errors import WeightsError
from store.cores import usable_cores
from store.layout import Store

__all__ = ["DEMO_FEATURES", "DemoResult", "Demo", "run_demo"]

# (CLI alias, options) in the order they are extracted; the CRMO poster's two feature families
DEMO_FEATURES: dict[str, list[tuple[str, dict]]] = {
    "crmo": [
        ("inception", {"weights": "hub"}),
        ("sift_bovw", {"vocab_size": 50, "vocab_split": "train"}),
    ],
}


@dataclass
class DemoResult:
    """What the demo did: every line it showed, the features it left out, the fitted run and its report."""

    dataset: str
    lines: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    run_id: str | None = None
    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        """0: a fitted result was produced (failures raise before a result exists)."""
        return 0

    def summary_lines(self) -> list[str]:
        """The lines ``cli.py demo`` prints, in order."""
        return list(self.lines)


class Demo:
    """The demo on ``dataset`` as an iterator of output lines; each step runs when its lines are asked for.

    Every line is also kept in ``result.lines``; ``result`` is complete once the iterator is exhausted.
    """

    def __init__(self, store: Store, dataset: str = "crmo") -> None:
        self.store = store
        self.result = DemoResult(dataset=dataset)

    def __iter__(self) -> Iterator[str]:
        for step in (self._ingest, self._extract, self._fit, self._report):
            for line in step():
                self.result.lines.append(line)
                yield line

    def _ingest(self) -> Iterator[str]:
        from store.datasets import synthetic_notice
        from store.ingest import ingest_dataset

        dataset = self.result.dataset
        yield f"== 1/4 ingest the demo dataset {dataset!r}"
        summary = ingest_dataset(self.store, dataset, workers=min(2, usable_cores()))
        notice = synthetic_notice(self.store, dataset)
        if notice:
            yield notice
        yield summary.summary_line()

    def _extract(self) -> Iterator[str]:
        from extractors import build_from_options
        from extractors.runner import run_extraction

        yield "== 2/4 extract features"
        for alias, options in DEMO_FEATURES[self.result.dataset]:
            try:
                extractor = build_from_options(alias, options)
                summary = run_extraction(extractor, self.store, dataset=self.result.dataset)
            except WeightsError as exc:
                self.result.left_out.append(alias)
                yield f"LEFT OUT {alias}: its pretrained weights cannot be had here.\n  {exc}"
                continue
            done = "already there" if summary.written == 0 else f"{summary.written} rows in {summary.seconds:.1f} s"
            yield f"  {summary.table}: {done}"

    def _fit(self) -> Iterator[str]:
        from classifiers.fitting import FitRequest, fit

        yield "== 3/4 fit the default ensemble (subject-grouped CV + held-out test subjects)"
        outcome = fit(self.store, FitRequest(model="ensemble", dataset=self.result.dataset))
        self.result.run_id = outcome.run_id
        yield from outcome.summary_lines()

    def _report(self) -> Iterator[str]:
        from classifiers.report import write_report

        yield "== 4/4 report"
        self.result.report_path = write_report(self.store, self.result.run_id)
        yield f"report written: {self.result.report_path}"
        if self.result.left_out:
            yield (
                "Features left out for lack of pretrained weights: " + ", ".join(self.result.left_out) + ". Add "
                "them with 'python cli.py weights import inception_v3 FILE' (or run once with internet), then "
                f"'python cli.py extract --extractor inception --dataset {self.result.dataset}' and fit again."
            )


def run_demo(store: Store, dataset: str = "crmo") -> DemoResult:
    """Ingest the demo ``dataset`` into ``store``, extract its features, fit the default ensemble, write a report.

    Returns the ``DemoResult`` (its ``summary_lines()`` are what ``cli.py demo`` prints). Errors that stop
    the demo (``ChronofeatError``) propagate; features whose pretrained weights cannot be had are left out.
    """
    demo = Demo(store, dataset)
    for _ in demo:
        pass
    return demo.result
