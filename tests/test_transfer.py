"""The transfer protocol (seed 001, Fig. 8): seeds, mean ± std, the strongly supervised bound, the run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from classifiers.transfer import (
    SUPERVISED_BOUND,
    TRANSFER_METHODS,
    format_transfer_table,
    nested_subsets,
    plot_transfer,
    summarise_seeds,
)
from features.errors import ParameterError
from tests._demo_stores import core_copy, demo_store
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(values: dict[str, float], *, images: int, fraction: float = 1.0) -> dict:
    return {"fraction": fraction, "subjects": 10, "images": images, **values}


def test_summarise_seeds_gives_mean_and_sample_std_per_size_and_method():
    per_seed = [
        [_rows({m: 0.5 for m in TRANSFER_METHODS}, images=100, fraction=0.5), _rows({m: 0.6 for m in TRANSFER_METHODS},
                                                                                    images=200)],
        [_rows({m: 0.7 for m in TRANSFER_METHODS}, images=110, fraction=0.5), _rows({m: 0.6 for m in TRANSFER_METHODS},
                                                                                    images=200)],
    ]
    rows = summarise_seeds(per_seed)
    assert [r["fraction"] for r in rows] == [0.5, 1.0]
    for method in TRANSFER_METHODS:
        assert rows[0][method] == pytest.approx(0.6)
        assert rows[0][f"{method} std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
        assert rows[1][f"{method} std"] == 0.0
    assert rows[0]["images"] == 105 and rows[0]["images_range"] == (100, 110) and rows[0]["seeds"] == 2
    single = summarise_seeds(per_seed[:1])
    assert single[0]["scratch std"] == 0.0  # one seed: no spread, not NaN


def test_table_shows_mean_std_cells_and_the_bound_line():
    rows = summarise_seeds([[_rows({m: 0.25 * (i + 1) for i, m in enumerate(TRANSFER_METHODS)}, images=50)],
                            [_rows({m: 0.25 * (i + 1) - 0.1 for i, m in enumerate(TRANSFER_METHODS)}, images=50)]])
    bound = {"value": 0.81, "std": 0.02, "subjects": 30, "images": 500}
    text = format_transfer_table(rows, bound)
    lines = text.splitlines()
    assert "mean ± std over 2 seed(s)" in lines[0]
    assert all(m in lines[1] for m in TRANSFER_METHODS)
    assert "0.200 ± 0.071" in lines[2] and "0.950 ± 0.071" in lines[2]
    assert lines[-1].split()[0] == "bound" and f"{SUPERVISED_BOUND}: 0.810 ± 0.020" in lines[-1]
    png = plot_transfer(rows, title="t", bound=bound)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_nested_subsets_grow_and_depend_on_the_seed():
    subjects = [f"s{i}" for i in range(20)]
    small, large = nested_subsets(subjects, [0.25, 1.0], seed=0)
    assert len(small) == 5 and set(small) <= set(large) and len(large) == 20
    assert nested_subsets(subjects, [0.25], seed=1)[0] != small


def test_run_transfer_checks_its_options(tmp_store):
    from classifiers.transfer import run_transfer

    with pytest.raises(ParameterError, match="'seeds' parameter of run_transfer"):
        run_transfer(tmp_store, "abcdef", seeds=0)
    with pytest.raises(ParameterError, match="'train_sizes'"):
        run_transfer(tmp_store, "abcdef", train_sizes=(1.0, 0.5))


# --- end to end on the spine demo ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def transfer_store(tmp_path_factory):
    from extractors.siamese import train_siamese

    store = core_copy(demo_store(tmp_path_factory, "spine"), tmp_path_factory.mktemp("transfer") / "store")
    trained = train_siamese(store, "spine", epochs=1, image_size=32, embed_dim=16, seed=0, device="cpu",
                            progress=False)
    return store, trained.artifact


@pytest.mark.slow
def test_transfer_over_two_seeds_prints_mean_std_and_the_supervised_bound(transfer_store):
    from store.runs import list_runs, run_metrics, run_predictions

    store, artifact = transfer_store
    result = run_cli("transfer", "--artifact", artifact.short, "--dataset", "spine", "--seeds", "2", "--epochs", "2",
                     "--train-sizes", "0.5,1.0", "--device", "cpu", store=store)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mean ± std over 2 seed(s)" in out and "seeds 0, 1" in out
    size_lines = [line for line in out.splitlines() if re.match(r"\s+(0\.50|1\.00)\s", line)]
    assert len(size_lines) == 2 and all(line.count("±") == len(TRANSFER_METHODS) for line in size_lines)
    bound_line = next(line for line in out.splitlines() if line.split()[:1] == ["bound"])
    assert re.search(rf"{re.escape(SUPERVISED_BOUND)}: 0\.\d{{3}} ± 0\.\d{{3}}", bound_line)

    runs = list_runs(store)
    assert runs.column("model").to_pylist()[-1] == "transfer"
    run_id = runs.column("run_id").to_pylist()[-1]
    assert run_id in out
    metrics = run_metrics(store, run_id).to_pylist()
    assert len(metrics) == 2 * (2 * len(TRANSFER_METHODS) + 1)  # seeds x (sizes x methods + the bound)
    assert {m["member"] for m in metrics} == {*TRANSFER_METHODS, SUPERVISED_BOUND}
    by_method = {}
    for m in metrics:
        by_method.setdefault((m["member"], m["fold"]), []).append(m["value"])
    assert any(np.std(v) > 0 for v in by_method.values())  # the seeds really differ
    tested = set(run_predictions(store, run_id, split="test").column("subject").to_pylist())
    assert tested == set(artifact.meta["subjects"]["test"])  # judged only on subjects the network never saw
