"""Features from a trained network are never judged on subjects that network trained on.

A feature table extracted with ``extract --extractor siamese|cae --artifact A`` records the network
artifact in its parts' metadata (``chronofeat.network_artifact``), and the artifact records the subjects
the network trained on, used for early stopping (validation) and held out (``extractors.siamese.
store_network``). A held-out test subject the network saw is not held out: its features were shaped by
its own images, and the test score would be optimistic (the spine paper keeps every subject the
Siamese network saw out of the classification test set, section 4.2).

``guard_network_subjects`` is what ``classifiers.planning.plan_fit`` calls once the plan is made:

- no feature table comes from a network, or the networks saw none of the dataset's subjects: the plan
  is returned unchanged;
- the test rule is the dataset profile's default: the held-out test set becomes every subject of the
  dataset that no network behind the features saw (for a network trained on this dataset: its own
  held-out test subjects), the same on every seed, and a note says so;
- the user chose the test subjects (``--test-subjects`` fraction, per-class or a file) or the data's
  ``split`` column does (``--split given``): ``EvaluationError`` when a test subject of any seed was
  seen by a network, naming the table, the artifact, how many test subjects it trained on, and what to do;
- no held-out test set (``--test-subjects 0``): a note that cross-validation folds hold subjects the
  network trained on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from features.errors import EvaluationError, StoreError

__all__ = [
    "NetworkSource",
    "network_sources",
    "dataset_subjects",
    "rule_test_subjects",
    "leak_message",
    "guard_network_subjects",
]

NETWORK_KIND = "networks"
ARTIFACT_KEY = "chronofeat.network_artifact"


@dataclass(frozen=True)
class NetworkSource:
    """A feature table extracted by a trained network, and the subjects that network saw and did not see."""

    table: str
    artifact: str  # short id (12 hex characters)
    family: str  # siamese | cae
    dataset: str | None  # the dataset the network trained on
    description: Path  # the artifact's JSON description (its 'subjects' entry lists them)
    train: frozenset
    val: frozenset
    test: frozenset

    @property
    def seen(self) -> frozenset:
        """Subjects whose images shaped the network: its training and validation (early-stopping) subjects."""
        return self.train | self.val


def network_sources(store, tables) -> list[NetworkSource]:
    """One ``NetworkSource`` per table of ``tables`` (names) whose parts name a network artifact.

    ``EvaluationError`` when a table names an artifact that is no longer in the store (which subjects it
    trained on cannot be known); ``WeightsError`` when the artifact does not record its subjects.
    """
    from extractors.siamese import network_subjects
    from store.artifacts import find_artifact
    from store.tables import table_kv_metadata

    sources = []
    for table in dict.fromkeys(tables):
        sha = table_kv_metadata(store, table, skip_damaged=True).get(ARTIFACT_KEY)
        if not sha:
            continue
        try:
            artifact = find_artifact(store, NETWORK_KIND, sha)
        except StoreError:
            raise EvaluationError(
                f"Feature table {table!r} was extracted with network artifact {sha[:12]}, which is not in "
                f"{store.root}/artifacts/{NETWORK_KIND}: which subjects it trained on is unknown, so no test set on "
                "these features can be trusted. Restore the artifact, or retrain the network and extract again."
            ) from None
        sides = network_subjects(artifact)
        sources.append(NetworkSource(table, artifact.short, str(artifact.meta.get("family", "network")),
                                     artifact.meta.get("dataset"), artifact.path.with_suffix(".json"),
                                     sides["train"], sides["val"], sides["test"]))
    return sources


def _query_column(store, sql: str, params: list) -> list:
    from store.sql import connect

    con = connect(store)
    try:
        return [row[0] for row in con.execute(sql, params).fetchall()]
    finally:
        con.close()


def dataset_subjects(store, dataset: str) -> frozenset:
    """Every subject key of ``dataset`` in the store's ``scans`` table."""
    return frozenset(str(s) for s in _query_column(store, "SELECT DISTINCT subject FROM scans WHERE dataset = ?",
                                                   [dataset]))


def _given_test_subjects(store, plan) -> frozenset:
    """Subjects on the 'test' side of the data's ``split`` column (``--split given``), from scans or pairs."""
    from store.tables import table_exists

    table = "pairs" if plan.unit == "pairs" else "scans"
    if not table_exists(store, table):
        return frozenset()
    columns = _query_column(store, f"SELECT column_name FROM (DESCRIBE {table})", [])
    if "split" not in columns:
        return frozenset()
    sql = f"SELECT DISTINCT subject FROM {table} WHERE dataset = ? AND lower(split) = 'test'"
    return frozenset(str(s) for s in _query_column(store, sql, [plan.dataset]))


def rule_test_subjects(store, plan, seed: int) -> frozenset:
    """The held-out test subjects ``plan`` will use on ``seed``: the listed ones, the data's 'test' side,
    or ``store.subjects.dataset_subject_split`` (the rule ``classifiers.evaluate`` applies); empty for none."""
    from store.subjects import dataset_subject_split

    if plan.split == "given":
        return _given_test_subjects(store, plan)
    if plan.test_rule == "none":
        return frozenset()
    if plan.test_rule == "list":
        return frozenset(plan.test_subject_list or ())
    return frozenset(dataset_subject_split(store, plan.dataset, test_fraction=plan.test_fraction, seed=seed).test)


def _rule_text(plan, seed: int) -> str:
    if plan.split == "given":
        return "the 'test' side of the data's split column (--split given)"
    if plan.test_rule == "list":
        return "the subjects listed in --test-subjects"
    if plan.test_rule == "per_class":
        return f"one subject per class (--test-subjects per-class), seed {seed}"
    return f"{plan.test_fraction:g} of the subjects (--test-subjects {plan.test_fraction:g}), seed {seed}"


def leak_message(source: NetworkSource, test: frozenset, *, rule: str, unseen: int) -> str:
    """The refusal: table, artifact, how many test subjects the network trained on, and what to do."""
    leaked = test & source.seen
    in_train, in_val = len(test & source.train), len(test & source.val)
    return (
        f"Feature table {source.table!r} comes from {source.family} network artifact {source.artifact} (trained on "
        f"{source.dataset!r}), and the network trained on {len(leaked)} of the {len(test)} held-out test subjects "
        f"({in_train} in its training set, {in_val} in its validation set); the test set is {rule}. Scores on "
        f"subjects whose images shaped the features are optimistic, so fit refuses. Leave --test-subjects out to "
        f"hold out the {unseen} subjects no network behind the features saw, or pass --test-subjects FILE listing "
        f"the network's held-out subjects (its description {source.description} lists them under "
        f"subjects.test), or retrain the network ('python cli.py train {source.family} --dataset "
        f"{source.dataset}') so that your test subjects are held out of it."
    )


def _unseen_plan(plan, sources: list[NetworkSource], unseen: frozenset):
    """``plan`` with the held-out test set replaced by the ``unseen`` subjects, with a note saying why."""
    if not unseen:
        names = ", ".join(f"{s.artifact} ({s.table})" for s in sources)
        raise EvaluationError(
            f"Every subject of {plan.dataset!r} trained the network(s) behind the features ({names}); no subject is "
            "left to judge on honestly. Retrain the network with subjects held out (python cli.py train ... "
            "holds out a fraction by default) and extract its features again."
        )
    names = ", ".join(f"{s.family} {s.artifact} (table {s.table})" for s in sources)
    note = (f"held-out test: the {len(unseen)} subjects that network {names} never saw, the same on every seed, "
            "instead of the profile's rule: its training and validation subjects are never judged on "
            "(classifiers.leakage)")
    return dataclasses.replace(plan, test_rule="list", test_fraction=0.0, test_subject_list=tuple(sorted(unseen)),
                               test_list_source=f"that network {names} never saw", notes=[*plan.notes, note])


def guard_network_subjects(store, plan, *, explicit: bool):
    """``plan`` (a ``classifiers.planning.FitPlan``) made safe from network leakage (module docstring).

    ``explicit``: the user chose the test subjects (``--test-subjects``). Returns the plan, unchanged or
    with the network's unseen subjects as its test set; raises ``EvaluationError`` (naming table,
    artifact, leaked subject count and the remedies) when the chosen test subjects were seen.
    """
    tables = [table for fs in plan.feature_sets for table in fs.tables]
    sources = network_sources(store, tables)
    if not sources:
        return plan
    subjects = dataset_subjects(store, plan.dataset)
    sources = [s for s in sources if s.seen & subjects]
    if not sources:
        return plan
    seen = frozenset().union(*(s.seen for s in sources))
    unseen = subjects - seen
    if plan.split != "given" and plan.test_rule == "none":
        note = (f"no held-out test set: the cross-validation folds hold subjects the network behind "
                f"{', '.join(s.table for s in sources)} trained on, so CV scores are optimistic")
        return dataclasses.replace(plan, notes=[*plan.notes, note])
    if plan.split != "given" and plan.test_rule != "list" and not explicit:
        return _unseen_plan(plan, sources, unseen)
    for seed in plan.seeds if plan.test_rule != "list" else plan.seeds[:1]:
        test = rule_test_subjects(store, plan, seed) & subjects
        for source in sources:
            if test & source.seen:
                raise EvaluationError(leak_message(source, test, rule=_rule_text(plan, seed), unseen=len(unseen)))
    return plan
