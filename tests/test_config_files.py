"""Parameter files: ``--config FILE`` (TOML / YAML) for extract and fit, recorded options, ``--dump-config``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cli
from features.errors import ParameterError
from store.config_files import (
    config_defaults,
    config_toml,
    effective_options,
    parse_command_line,
    read_config,
    write_config,
)
from store.layout import open_store
from store.runs import list_runs, run_metrics, run_row
from store.tables import read_table, table_kv_metadata
from tests.test_featuresets import build_crmo_like

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

FIT_TOML = """\
dataset = "crmo"          # flat keys: every command
seeds = 2

[extract]                 # skipped by fit
extractor = "diffstats"

[fit]
model = "logistic"
features = "inception_v3:diff"
folds = 3
test-subjects = "0.3"     # the option's own name, with dashes
augment = true
variance_threshold = 0.0
backbone = "resnet18"     # fit --model's destination
"""


def _parse(*argv):
    return parse_command_line(cli.build_parser(), list(argv))


def test_toml_and_yaml_give_the_same_options(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text(FIT_TOML)
    yaml_file = tmp_path / "exp.yml"
    yaml_file.write_text(
        "dataset: crmo\nseeds: 2\nextract: {extractor: diffstats}\nfit:\n  model: logistic\n"
        "  features: 'inception_v3:diff'\n  folds: 3\n  test-subjects: '0.3'\n  augment: true\n"
        "  variance_threshold: 0.0\n  backbone: resnet18\n"
    )
    from_toml, from_yaml = read_config(toml, command="fit"), read_config(yaml_file, command="fit")
    assert from_toml == from_yaml
    assert from_toml["folds"] == 3 and "extractor" not in from_toml and from_toml["dataset"] == "crmo"
    assert read_config(toml, command="extract") == {"dataset": "crmo", "seeds": 2, "extractor": "diffstats"}


def test_file_options_are_defaults_and_the_command_line_wins(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(FIT_TOML)
    args = _parse("fit", "--config", str(exp), "--folds", "5")
    assert (args.model, args.dataset, args.features, args.seeds) == ("logistic", "crmo", "inception_v3:diff", 2)
    assert args.folds == 5  # command line over file
    assert (args.test_subjects, args.augment, args.variance_threshold, args.backbone) == ("0.3", True, 0.0, "resnet18")
    assert _parse("fit", "svm_rbf", f"--config={exp}").model == "svm_rbf"  # the positional, too
    assert _parse("fit", "logistic", "--folds", "4").folds == 4  # no --config: plain argparse
    # a required option (extract --extractor / --dataset) may come from the file alone
    extract = tmp_path / "x.yaml"
    extract.write_text("extract:\n  extractor: diffstats\n  dataset: chronomid\n  reference: relative\n  workers: 1\n")
    args = _parse("extract", "--config", str(extract))
    assert (args.extractor, args.dataset, args.reference, args.workers) == ("diffstats", "chronomid", "relative", 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fit]\nfols = 3\n", "unknown option 'fols' for 'fit'. Did you mean 'folds'? Valid options: augment, "),
        ('folds = "three"\n', "The 'folds' option in {file} must be an int (as --folds on the command line). "
                              "Got 'three' instead."),
        ("folds = 2.5\n", "must be an int (as --folds on the command line). Got 2.5 instead."),
        ('augment = "yes"\n', "The 'augment' option in {file} must be true or false (a flag on the command line)."),
        ('search = "fast"\n', "must be one of none, quick, thorough (as --search on the command line). Got 'fast'"),
        ("seeds = [1, 2]\n", "The 'seeds' option in {file} must be an int"),
        ('store = "/elsewhere"\n', "'store' cannot be set in a configuration file; give --store on the command line"),
        ("folds = [\n", "is not valid TOML: "),
    ],
)
def test_bad_files_stop_with_exit_2_and_name_file_and_option(tmp_path, capsys, text, message):
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fit", "logistic", "--config", str(exp), "--store", str(tmp_path / "store")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(file=exp) in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()  # nothing ran


def test_missing_file_wrong_suffix_and_yaml_shapes(tmp_path):
    parser = cli.build_parser()
    with pytest.raises(ParameterError, match=r"nope\.toml does not exist .*--dump-config FILE"):
        read_config(tmp_path / "nope.toml", command="fit")
    (tmp_path / "exp.json").write_text("{}")
    with pytest.raises(ParameterError, match=r"must end in \.toml, \.yaml or \.yml"):
        read_config(tmp_path / "exp.json", command="fit")
    (tmp_path / "list.yaml").write_text("- folds\n- 3\n")
    with pytest.raises(ParameterError, match="must hold option = value entries .* it holds a list"):
        read_config(tmp_path / "list.yaml", command="fit")
    (tmp_path / "bad.yaml").write_text("fit:\n  folds: [3\n")
    with pytest.raises(ParameterError, match=r"bad\.yaml is not valid YAML: while parsing a flow sequence in line 2"):
        read_config(tmp_path / "bad.yaml", command="fit")
    (tmp_path / "empty.yaml").write_text("")
    assert read_config(tmp_path / "empty.yaml", command="fit") == {}
    fit_parser = next(a for a in parser._actions if isinstance(a.choices, dict)).choices["fit"]
    assert config_defaults(fit_parser, {"folds": None}, source="x.yaml", command="fit") == {}  # null: the default


def test_abbreviated_config_flag_is_refused(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text("folds = 3\n")
    with pytest.raises(SystemExit) as stopped:
        _parse("fit", "logistic", "--conf", str(exp))
    assert stopped.value.code == 2 and "write --config in full" in capsys.readouterr().err


def test_dumped_options_read_back_to_the_same_namespace(tmp_path):
    argv = ["fit", "ensemble", "--dataset", "crmo", "--members", "logistic=inception_v3:diff;svm_rbf=x:concat",
            "--seeds", "3", "--member-weights", "2,1", "--variance-threshold", "1e-05", "--no-timestamps",
            "--target", 'label "quoted" \\ ü', "--lr", "0.001", "--store", str(tmp_path)]
    first = _parse(*argv)
    for name in ("exp.toml", "exp.yaml"):
        path = write_config(tmp_path / name, "fit", effective_options(first))
        again = _parse("fit", "--config", str(path), "--store", str(tmp_path))
        assert effective_options(again) == effective_options(first)
    options = effective_options(first)
    assert not {"store", "force", "config", "dump_config", "func", "command"} & set(options)
    parsed = tomllib.loads(config_toml("fit", options, comment="a\nb"))
    assert parsed["fit"]["variance_threshold"] == 1e-05 and parsed["fit"]["timestamps"] is False
    assert "epochs" not in parsed["fit"]  # None: the command's default, left out


def test_fit_round_trips_through_dump_config(tmp_path, capsys):
    store = open_store(tmp_path / "store")
    build_crmo_like(store, n_subjects=15, dim=32, vocab=20, signal=0.3)  # imperfect figures
    dumped = tmp_path / "fit.toml"
    common = ["--store", str(store.root)]
    assert cli.main(["fit", "logistic", "--dataset", "crmo", "--features", "inception_v3:diff", "--folds", "3",
                     "--seeds", "1", "--test-subjects", "0.3", "--dump-config", str(dumped), *common]) == 0
    first = list_runs(store).column("run_id").to_pylist()[-1]
    assert "configuration written" in capsys.readouterr().err
    recorded = run_row(store, first)["config"]["cli"]
    assert recorded["command"] == "fit" and recorded["options"]["folds"] == 3 and "store" not in recorded["options"]

    # the run's record written back out equals the --dump-config file's options
    exported = tmp_path / "from_run.toml"
    assert cli.main(["config", "--run", first, "--output", str(exported), *common]) == 0
    assert tomllib.loads(exported.read_text()) == tomllib.loads(dumped.read_text())

    assert cli.main(["fit", "--config", str(exported), *common]) == 0
    second = list_runs(store).column("run_id").to_pylist()[-1]
    assert second != first
    rows = [run_row(store, r) for r in (first, second)]
    assert rows[0]["feature_tables"] == rows[1]["feature_tables"] == ["inception_v3"]
    assert rows[0]["feature_hashes"] == rows[1]["feature_hashes"] and rows[0]["seeds"] == rows[1]["seeds"] == [0]

    def figures(run_id):
        table = run_metrics(store, run_id).to_pylist()
        return sorted((m["member"], m["split"], m["fold"], m["seed"], m["metric"], m["class"] or "", m["value"])
                      for m in table)

    before, after = figures(first), figures(second)
    assert len(before) > 20 and before == after
    assert any(m[4] == "accuracy" and m[1] == "test" and 0.5 < m[6] < 1 for m in before)  # learnable, not perfect
    # the comparison can tell runs apart: the same file with --folds 2 on the command line is another experiment
    assert cli.main(["fit", "--config", str(exported), "--folds", "2", *common]) == 0
    third = list_runs(store).column("run_id").to_pylist()[-1]
    assert run_row(store, third)["config"]["cli"]["options"]["folds"] == 2 and figures(third) != before


def test_config_of_a_run_without_recorded_options_says_so(tmp_path, capsys):
    from classifiers.fitting import FitRequest, fit

    store = open_store(tmp_path / "store")
    build_crmo_like(store, n_subjects=12, dim=32, vocab=20)
    fit(store, FitRequest(model="logistic", dataset="crmo", features="inception_v3:diff", folds=2, seeds=1,
                          progress=False, n_boot=50))  # the Python API: no command options
    run_id = list_runs(store).column("run_id").to_pylist()[-1]
    assert "cli" not in run_row(store, run_id)["config"]
    assert cli.main(["config", "--run", run_id, "--store", str(store.root)]) == 2
    assert "records no command options" in capsys.readouterr().err
    assert cli.main(["config", "--table", "nope", "--store", str(store.root)]) == 2
    assert "has no table 'nope'" in capsys.readouterr().err


@pytest.fixture()
def tiny_longitudinal(tmp_path):
    """Three subjects imaged twice (a brighter blob the second time): a few absolute pairs."""
    root = tmp_path / "tiny"
    root.mkdir()
    rng = np.random.default_rng(5)
    lines = ["path,subject,time,label"]
    for s in range(3):
        for t in (0, 1):
            image = rng.integers(0, 60, (32, 32), dtype=np.uint8)
            image[10:20, 10:20] += np.uint8(40 * t * (s + 1))
            Image.fromarray(image).save(root / f"s{s}_t{t}.png")
            lines.append(f"s{s}_t{t}.png,S{s},{t},{'grew' if s else 'same'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_extract_records_its_options_and_round_trips(tmp_path, tiny_longitudinal, capsys):
    store = tmp_path / "store"
    common = ["--store", str(store)]
    assert cli.main(["ingest", "--dataset", "tiny", "--root", str(tiny_longitudinal), *common]) == 0
    dumped = tmp_path / "x.yaml"
    assert cli.main(["extract", "--extractor", "diffstats", "--dataset", "tiny", "--reference", "relative",
                     "--workers", "1", "--limit", "4", "--dump-config", str(dumped), *common]) == 0
    first = capsys.readouterr().out
    assert "diffstats_relative: wrote 4 rows" in first
    opened = open_store(store)
    meta = table_kv_metadata(opened, "diffstats_relative")
    assert '"reference":"relative"' in meta["chronofeat.cli"] and '"command":"extract"' in meta["chronofeat.cli"]

    exported = tmp_path / "from_table.toml"
    assert cli.main(["config", "--table", "diffstats_relative", "--output", str(exported), *common]) == 0
    assert tomllib.loads(exported.read_text())["extract"] == {
        "extractor": "diffstats", "dataset": "tiny", "limit": 4, "engine": "local", "reference": "relative",
        "workers": 1,
    }
    # fed back (the YAML dump, and the table's TOML without its limit): the same table, only the rest computed
    assert cli.main(["extract", "--config", str(dumped), "--limit", "100", *common]) == 0
    out = capsys.readouterr().out
    assert "diffstats_relative: wrote 2 rows, skipped 4 already present" in out
    assert cli.main(["extract", "--config", str(exported), *common]) == 0
    assert "diffstats_relative: nothing to do — all 6 pair_ids already extracted" in capsys.readouterr().out
    assert read_table(opened, "diffstats_relative").num_rows == 6
