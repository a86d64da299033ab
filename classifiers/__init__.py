"""chronofeat classifiers: a registry of models and ensembles, subject-grouped evaluation, reports.

Entry points: ``classifiers.fitting.fit`` with a ``FitRequest`` (``cli.py fit``; feature models go
through ``classifiers.planning.plan_fit`` and ``classifiers.evaluate.run_plan``),
``classifiers.predict.predict_report`` (``cli.py predict``), ``classifiers.report.write_report``
(``cli.py report``) and ``classifiers.report.runs_table`` (``cli.py runs``).
Submodules are imported explicitly so that importing the registry does not pull in matplotlib.
"""

from classifiers._registry import (
    create_model,
    is_ensemble,
    list_models,
    model_class,
    register_model,
)

__all__ = ["register_model", "create_model", "list_models", "model_class", "is_ensemble"]
