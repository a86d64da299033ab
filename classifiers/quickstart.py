"""The main job on the built-in demo data, end to end: ingest, extract features, fit, show a result.

This is what ``python3 cli.py demo`` runs. It must end in a fitted result even without internet:
features that need pretrained weights which cannot be had are left out, said plainly with how to
add them, and the rest goes on. (An explicit ``extract --extractor inception`` still fails fast.)
"""

from __future__ import annotations

from collections.abc import Callable

from features.errors import WeightsError
from store.cores import usable_cores
from store.layout import Store

__all__ = ["run_quickstart", "QUICKSTART_FEATURES"]

# (CLI alias, options) in the order they are extracted; the CRMO poster's two feature families
QUICKSTART_FEATURES: dict[str, list[tuple[str, dict]]] = {
    "crmo": [
        ("inception", {"weights": "hub"}),
        ("sift_bovw", {"vocab_size": 50, "vocab_split": "train"}),
    ],
}


def run_quickstart(store: Store, *, dataset: str = "crmo", out: Callable[[str], None] = print) -> int:
    """Ingest the demo ``dataset``, extract its features, fit the default ensemble, write a report.

    Returns the exit status for the command line (0 when a fitted result was produced).
    """
    from classifiers.evaluate import fit_command
    from classifiers.report import write_report
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from store.datasets import synthetic_notice
    from store.ingest import ingest_dataset

    out(f"== 1/4 ingest the demo dataset {dataset!r}")
    summary = ingest_dataset(store, dataset, workers=min(2, usable_cores()))
    notice = synthetic_notice(store, dataset)
    if notice:
        out(notice)
    out(summary.summary_line())

    out("== 2/4 extract features")
    left_out: list[str] = []
    for alias, options in QUICKSTART_FEATURES[dataset]:
        try:
            extractor = build_from_options(alias, options)
            result = run_extraction(extractor, store, dataset=dataset)
        except WeightsError as exc:
            left_out.append(alias)
            out(f"LEFT OUT {alias}: its pretrained weights cannot be had here.\n  {exc}")
            continue
        done = "already there" if result.written == 0 else f"{result.written} rows in {result.seconds:.1f} s"
        out(f"  {result.table}: {done}")

    out("== 3/4 fit the default ensemble (subject-grouped CV + held-out test subjects)")
    fit = fit_command(store, "ensemble", dataset=dataset, out=out)

    out("== 4/4 report")
    path = write_report(store, fit.run_id)
    out(f"report written: {path}")
    if left_out:
        out(
            "Features left out for lack of pretrained weights: " + ", ".join(left_out) + ". Add them with "
            "'python cli.py weights import inception_v3 FILE' (or run once with internet), then "
            f"'python cli.py extract --extractor inception --dataset {dataset}' and fit again."
        )
    return 0
