"""chronofeat classifiers: a registry of models and ensembles, subject-grouped evaluation, reports.

Entry points: ``classifiers.evaluate.fit_command`` (``cli.py fit``), ``classifiers.predict.predict``
(``cli.py predict``), ``classifiers.report.write_report`` (``cli.py report``) and
``store.runs.list_runs`` with ``classifiers.report.format_runs`` (``cli.py runs``).
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
