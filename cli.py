#!/usr/bin/env python3
"""chronofeat command line: ingest images, extract features, query them with SQL, fit and judge models.

Every command parses its arguments, calls one library function, prints, and sets the exit status:
0 success; 1 the command finished but some inputs failed (see the ``failures`` table);
2 the command could not run (bad argument, missing table or weights ...: the message says what to do);
3 internal error (a bug: the traceback is saved in the store's ``logs/`` folder).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

from store.bootstrap import ensure_environment

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERNAL, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 141


def _say(text: str = "") -> None:
    print(text, flush=True)


def _say_lines(lines) -> None:
    for line in lines:
        _say(line)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _store(args):
    from store.layout import open_store

    return open_store(args.store, force=getattr(args, "force", False))


def _announce_synthetic(store, dataset: str | None) -> None:
    """Print the synthetic-data notice when ``dataset`` is a generated demo stand-in."""
    if not dataset:
        return
    from store.datasets import synthetic_notice

    notice = synthetic_notice(store, dataset)
    if notice:
        _note(notice)


# --- commands ------------------------------------------------------------------------------
def cmd_ingest(args) -> int:
    from store.ingest import ingest_dataset

    store = _store(args)
    summary = ingest_dataset(
        store, args.dataset, root=args.root, layout=args.layout, workers=args.workers, retry_failed=args.retry_failed,
        max_decoded_mb=args.max_decoded_mb, self_pairs=args.self_pairs,
    )
    _announce_synthetic(store, args.dataset)
    _say(summary.summary_line())
    return summary.exit_code


def cmd_tables(args) -> int:
    from store.catalog import tables_overview
    from store.render import format_table

    _say(format_table(tables_overview(_store(args)), max_rows=1000, max_width=80))
    return EXIT_OK


def cmd_features(args) -> int:
    from store.feature_catalog import features_overview
    from store.render import emit_result

    store = _store(args)
    shown = emit_result(features_overview(store, dataset=args.dataset), fmt=args.format, output=args.output,
                        max_rows=args.max_rows, store=store, max_width=60)
    if shown.note:
        _note(shown.note)
    sys.stdout.write(shown.text)
    sys.stdout.flush()
    return EXIT_OK


def cmd_show(args) -> int:
    from store.catalog import describe_table

    _say(describe_table(_store(args), args.table, rows=args.limit))
    return EXIT_OK


def cmd_check(args) -> int:
    from store.check import check_store
    from store.render import format_table

    result = check_store(_store(args), repair=args.repair)
    if result.findings:
        _say(format_table(result.findings_table(), max_rows=10_000, max_width=90))
    _say_lines(result.summary_lines())
    return result.exit_code


def cmd_sql(args) -> int:
    from store.render import check_result_options, emit_result
    from store.sql import query

    store = _store(args)
    check_result_options(fmt=args.format, output=args.output, max_rows=args.max_rows, store=store)
    result = query(store, args.query, write=args.write)
    shown = emit_result(result, fmt=args.format, output=args.output, max_rows=args.max_rows, store=store)
    if shown.note:
        _note(shown.note)
    sys.stdout.write(shown.text)
    sys.stdout.flush()
    return EXIT_OK


def cmd_extract(args) -> int:
    from extractors import build_from_options
    from extractors.runner import run_extraction
    from features.errors import ParameterError

    store = _store(args)
    engine_keys = ("func", "store", "command", "dataset", "limit", "engine", "address", "config", "dump_config",
                   "slices")
    options = {k: v for k, v in vars(args).items() if k not in engine_keys}
    extractor = build_from_options(args.extractor, options)
    if getattr(args, "slices", None):
        from extractors.slices import with_slices

        extractor = with_slices(extractor, args.slices)
    _announce_synthetic(store, args.dataset)
    if args.engine == "ray":
        from extractors.ray_engine import run_extraction_ray

        summary = run_extraction_ray(extractor, store, dataset=args.dataset, limit=args.limit, address=args.address)
    else:
        if args.address:
            raise ParameterError("--address goes with --engine ray; drop it or add --engine ray.")
        summary = run_extraction(extractor, store, dataset=args.dataset, limit=args.limit)
    _say_lines(summary.summary_lines())
    _dump_config(args)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def cmd_weights(args) -> int:
    from store.render import format_table
    from store.weights import import_weights, weights_table

    store = _store(args)
    if args.weights_command == "import":
        record = import_weights(store, args.name, args.file, map_by_order=args.map_by_order)
        _say(record.summary_line())
    else:
        _say(format_table(weights_table(store), max_rows=1000, max_width=70))
    return EXIT_OK


def cmd_vocab(args) -> int:
    from store.render import format_table
    from store.vocabulary import vocabularies_table

    _say(format_table(vocabularies_table(_store(args)), max_rows=1000, max_width=70))
    return EXIT_OK


def cmd_fit(args) -> int:
    from classifiers.fitting import FitRequest, fit

    outcome = fit(_store(args), FitRequest.from_options(vars(args)))
    _say_lines(outcome.summary_lines())
    _dump_config(args)
    return EXIT_OK


def _dump_config(args) -> None:
    """``--dump-config FILE``: write the command's effective options (after it succeeded)."""
    if args.dump_config:
        from store.config_files import effective_options, write_config

        path = write_config(args.dump_config, args.command, effective_options(args))
        _note(f"configuration written: {path} (run it again: python cli.py {args.command} --config {path})")


def cmd_config(args) -> int:
    from store.config_files import config_text

    _say(config_text(_store(args), run=args.run, table=args.table, output=args.output).rstrip("\n"))
    return EXIT_OK


def cmd_train(args) -> int:
    from extractors.cae import train_cae
    from extractors.siamese import train_siamese

    store = _store(args)
    _announce_synthetic(store, args.dataset)
    common = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device,
                  image_size=args.image_size, lr=args.lr, patience=args.patience)
    common = {k: v for k, v in common.items() if v is not None}
    if args.train_input == "volume":
        from extractors.volume_nets import train_on_volumes

        result = train_on_volumes(store, args.dataset, args.network, **common, margin=args.margin,
                                  backbone=args.backbone, embed_dim=args.embedding_dim, volume_size=args.volume_size,
                                  patch_size=args.patch_size, spacing=args.spacing, views=args.views)
        _say_lines(result.summary_lines())
        return EXIT_OK
    if args.network == "siamese":
        if args.train_input is not None or args.views is not None:
            from features.errors import ParameterError

            raise ParameterError("--input and --views are for 'train cae'; the Siamese network trains on scans.")
        extra = dict(margin=args.margin, backbone=args.backbone, embed_dim=args.embedding_dim)
        result = train_siamese(store, args.dataset, **common, **{k: v for k, v in extra.items() if v is not None})
    else:
        if args.embedding_dim is not None:
            from features.errors import ParameterError

            raise ParameterError("--embedding-dim is for 'train siamese'; the CAE's feature width follows its "
                                 "latent map (image size / 8)^2 x 16.")
        chosen = dict(input=args.train_input, views=args.views)
        result = train_cae(store, args.dataset, **common, **{k: v for k, v in chosen.items() if v is not None})
    _say_lines(result.summary_lines())
    return EXIT_OK


def cmd_transfer(args) -> int:
    from classifiers.transfer import run_transfer

    store = _store(args)
    _announce_synthetic(store, args.dataset)
    sizes = [float(x) for x in args.train_sizes.split(",")]
    options = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, device=args.device).items()
               if v is not None}
    result = run_transfer(store, args.artifact, dataset=args.dataset, target=args.target, train_sizes=sizes,
                          seed=args.seed, seeds=args.seeds, **options)
    _say_lines(result.summary_lines())
    return EXIT_OK


def cmd_predict(args) -> int:
    from classifiers.predict import predict_report

    store = _store(args)
    _announce_synthetic(store, args.dataset)
    output = predict_report(store, args.run, dataset=args.dataset, members=args.members, write=args.write,
                             fmt=args.format, output=args.output, max_rows=args.max_rows)
    for printed in output.lines:  # notes (what is not data) on stderr, so csv/json on stdout stay machine-readable
        (_note if printed.note else _say)(printed.text)
    return EXIT_OK


def cmd_runs(args) -> int:
    from classifiers.report import runs_table
    from store.render import format_table

    _say(format_table(runs_table(_store(args)), max_rows=args.limit, max_width=60))
    return EXIT_OK


def cmd_report(args) -> int:
    from classifiers.report import write_report

    path = write_report(_store(args), args.run, out_dir=args.output)
    _say(f"report written: {path}")
    return EXIT_OK


def cmd_view(args) -> int:
    from classifiers.viewer import write_view

    store = _store(args)
    _announce_synthetic(store, args.dataset)
    _say_lines(write_view(store, args.dataset, subjects=args.subjects, reference=args.reference,
                          runs=args.runs).summary_lines())
    return EXIT_OK


def cmd_demo(args) -> int:
    from classifiers.demo import Demo

    demo = Demo(_store(args), dataset=args.dataset)
    for line in demo:  # each line as soon as its step is done: the demo takes a while
        _say(line)
    return demo.result.exit_code


def cmd_reproduce(args) -> int:
    from classifiers.reproduce import ReproduceOptions, Reproduction

    run = Reproduction(_store(args), args.paper, ReproduceOptions(seeds=args.seeds, device=args.device))
    for line in run:  # each line as soon as its step is done: a reproduction takes minutes
        _say(line)
    return EXIT_OK


def cmd_export(args) -> int:
    from extractors.image_export import ExportSettings, export_images

    store = _store(args)
    settings = ExportSettings(kind=args.kind, bits=args.bits, size=args.size, views=args.views,
                              overlap_only=args.overlap_only, limit=args.limit, where=args.where)
    _announce_synthetic(store, args.dataset)
    summary = export_images(store, args.dataset, settings, args.out)
    _say_lines(summary.summary_lines())
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def cmd_test(args) -> int:
    import subprocess

    # argparse cannot hand options such as -m to a REMAINDER argument first: 'test -- -m "not slow"' does
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    command = [sys.executable, "-m", "pytest", *pytest_args]
    _note("running: " + " ".join(command))
    return subprocess.call(command, cwd=os.path.dirname(os.path.abspath(__file__)))


# --- argument parsing ----------------------------------------------------------------------
class _HelpFormatter(argparse.HelpFormatter):
    """Help texts may be callables, evaluated only when help is shown: lists of registered names come from
    the registries without importing torch or scikit-learn for every command."""

    def _format_action(self, action):
        if callable(action.help):
            action = copy.copy(action)
            action.help = action.help()
        return super()._format_action(action)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar (no side effects)."""
    from store.config_files import CONFIG_COMMANDS, add_config_options  # no pyarrow: cheap at parser time

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", default=None, help="feature store directory (default $CHRONOFEAT_STORE or ./featurestore)"
    )
    common.add_argument("--force", action="store_true",
                        help="use the store even inside a Python package or an unignored folder of a git work tree")

    parser = argparse.ArgumentParser(
        prog="cli.py", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, parents=[common], help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
        p.set_defaults(func=func)
        if name in CONFIG_COMMANDS:  # extract, fit: --config FILE / --dump-config FILE
            add_config_options(p)
        return p

    for add_command in (_add_demo_and_test, _add_ingest, _add_store_commands, _add_sql, _add_extract, _add_weights,
                        _add_fit, _add_train_and_transfer, _add_predict_and_runs, _add_export):
        add_command(add, common)
    return parser


def _add_export(add, common) -> None:
    p = add("export", cmd_export, "write images as the extractors see them (PNG + CSV index) for other tools")
    esub = p.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    e = esub.add_parser("images", parents=[common], formatter_class=_HelpFormatter,
                        help="scans, padded scans, difference images or multiview composites as PNG files",
                        description="Write <out>/<kind>/<id>.png and <out>/<kind>/index.csv (written last; value = "
                                    "offset + scale * pixel). A rerun skips files already exported (resume).")
    e.add_argument("--dataset", required=True)
    e.add_argument("--kind", required=True, choices=["image", "padded", "difference", "multiview"],
                   help="image: scan by the intensity policy; padded: on the dataset canvas; difference: pair "
                        "difference (registered); multiview: specimen composite")
    e.add_argument("--out", required=True, help="export folder (outside the store and the dataset's source folder)")
    e.add_argument("--bits", type=int, default=8, choices=[8, 16],
                   help="8: intensity policy applied (default); 16: raw stored values (image, padded) or the "
                        "difference quantised to 16 bits")
    e.add_argument("--size", type=int, default=None,
                   help="resample to SIZE x SIZE keeping the aspect ratio (the network input; multiview default 224)")
    e.add_argument("--where", default=None,
                   help="SQL condition over the scans (image, padded), pairs (difference) or specimen columns, "
                        "e.g. \"label = 'pth' AND time_index >= 2\"")
    e.add_argument("--limit", type=int, default=None, help="export at most N images")
    e.add_argument("--views", default=None, help="multiview: DV, LAT or DV,LAT (the composite, default)")
    e.add_argument("--overlap-only", action="store_true",
                   help="difference: 0 where either scan is canvas padding (register before padding)")


def _add_demo_and_test(add, common) -> None:
    from classifiers.demo import DEMO_FEATURES

    p = add("demo", cmd_demo,
            "the main job on built-in demo data: ingest, extract features, fit an ensemble, show the result")
    p.add_argument("--dataset", default="crmo", choices=sorted(DEMO_FEATURES), help="demo dataset (default crmo)")

    p = add("reproduce", cmd_reproduce,
            "a seed paper's headline experiment on its demo stand-in, as one command (see README)")
    p.add_argument("paper", choices=["chronomid", "crmo", "impc", "spine"], help="the paper, by its demo dataset")
    p.add_argument("--seeds", type=int, default=None, help="repeat over N seeds (default: the paper's)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])

    p = add("test", cmd_test, "run the test suite (pytest); extra arguments go to pytest")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="arguments for pytest after '--', e.g. -- -m 'not slow' -x (a file or folder may come first)")


def _add_ingest(add, common) -> None:
    from features.dataset_layouts import LAYOUTS  # no pyarrow: cheap at parser time

    p = add("ingest", cmd_ingest, "index a dataset's images into the scans (and pairs) tables")
    p.add_argument(
        "--dataset", required=True, help="dataset name: crmo, chronomid, impc, spine (demo when no --root) or your own"
    )
    p.add_argument("--root", default=None, help="folder of DICOM files, or of images plus manifest.csv")
    p.add_argument("--layout", default=None, choices=list(LAYOUTS))
    p.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    p.add_argument(
        "--retry-failed", action="store_true", help="try again the files recorded in 'failures' by earlier runs"
    )
    p.add_argument("--max-decoded-mb", type=float, default=None,
                   help="largest decoded size of one file, in MiB of float32 frames; bigger files are recorded in "
                        "failures, not decoded (default 1024, or $CHRONOFEAT_MAX_DECODED_MB)")
    p.add_argument("--self-pairs", default=None, action=argparse.BooleanOptionalAction,
                   help="pair each subject's first time point with itself (interval 0); default: only when the "
                        "dataset has repeated time points, so single-time-point images make no pairs")


def _add_store_commands(add, common) -> None:
    add("tables", cmd_tables, "list the store's tables with row counts and columns")

    p = add("features", cmd_features,
            "logical features (what --features names resolve to) with their variant tables, rows and provenance")
    p.add_argument("--dataset", default=None, help="only tables with rows for this dataset; marks the default variant")
    p.add_argument("--format", default=None, choices=["table", "csv", "json", "parquet"],
                   help="table on the terminal; with --output the file's suffix decides (.csv, .json, .parquet)")
    p.add_argument("--output", default=None, help="write the whole list to this file (outside the store)")
    p.add_argument("--max-rows", type=int, default=200, help="rows printed to the terminal (0 = all; default 200)")

    p = add("show", cmd_show, "one table's schema, provenance and first rows")
    p.add_argument("table")
    p.add_argument("--limit", type=int, default=10, help="rows to show (default 10)")

    p = add("check", cmd_check, "verify every part of every table (footer, data, schema, keys, provenance)")
    p.add_argument("--repair", action="store_true",
                   help="move bad parts to <store>/quarantine/ (never deletes) and say what to re-run")


def _add_sql(add, common) -> None:
    p = add("sql", cmd_sql, "read-only SQL (DuckDB) over every table of the store")
    p.add_argument("query")
    p.add_argument("--format", default=None, choices=["table", "csv", "json", "parquet"],
                   help="table on the terminal; with --output the file's suffix decides (.csv, .json, .parquet)")
    p.add_argument("--output", default=None, help="write the whole result to this file (outside the store)")
    p.add_argument("--max-rows", type=int, default=50, help="rows printed to the terminal (0 = all; default 50)")
    p.add_argument("--write", action="store_true",
                   help="also allow COPY ... TO 'file' outside the store and statements on in-memory tables")


def _add_extract(add, common) -> None:
    def extractor_names() -> str:  # evaluated only when help is shown (the registry imports torch)
        from extractors import cli_aliases

        return "one of: " + ", ".join(cli_aliases())

    p = add("extract", cmd_extract, "compute one extractor's features for a dataset into a feature table")
    p.epilog = (
        "Finished rows survive an interruption (even kill -9): a part is written every 4096 items and at least "
        "every 30 s of work (environment variable CHRONOFEAT_FLUSH_SECONDS sets that interval), and running the "
        "same command again computes only what is missing. A second run of the same table waits for the first, "
        "then computes only what is still missing."
    )
    p.add_argument("--extractor", required=True, help=extractor_names)
    p.add_argument("--dataset", required=True)
    p.add_argument("--limit", type=int, default=None, help="compute at most N items in this run")
    p.add_argument("--slices", default=None, metavar="POLICY",
                   help="which slices of each volume: all (default), every:K, central:N, mip:axial|coronal|sagittal, "
                        "kth (ChronoMID k-th-slice pairs); each policy is its own table, recorded in provenance")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="run here (default) or on Ray Data")
    p.add_argument("--address", default=None, help="Ray cluster address (with --engine ray), e.g. auto or ray://head:10001")
    cnn = p.add_argument_group("CNN options")
    cnn.add_argument("--model", default=None, help="any timm model name (overrides the short name)")
    cnn.add_argument("--input", default=None, choices=["image", "difference", "multiview", "volume"],
                     help="volume: with --extractor siamese|cae, a network from 'train ... --input volume' (one row "
                          "per volume)")
    cnn.add_argument("--views", default=None,
                     help="DV, LAT or DV,LAT: only those views (image: their scans; multiview: the specimen's mean "
                          "DV or LAT image, DV,LAT = the composite); each choice is its own table")
    p.add_argument(
        "--reference",
        default=None,
        choices=["absolute", "relative", "given"],
        help="pair reference for difference inputs and diffstats (given: pairs from the manifest, e.g. crmo)",
    )
    cnn.add_argument("--layer", default=None, help="'pooled' (default) or an intermediate stage name, e.g. blocks.2")
    cnn.add_argument(
        "--weights",
        default=None,
        help="'hub' (default: imported, cached or downloaded), a checkpoint FILE, or 'random'",
    )
    cnn.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    cnn.add_argument("--batch-size", type=int, default=None)
    cnn.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    cnn.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    bovw = p.add_argument_group("bag-of-visual-words options")
    bovw.add_argument("--vocab-size", type=int, default=None, help="visual words, e.g. 50 or 500")
    bovw.add_argument("--vocab-subjects", default=None, help="text file of subject keys to fit the vocabulary on")
    bovw.add_argument(
        "--vocab-split", default=None, choices=["train"], help="fit the vocabulary on the training subjects only"
    )
    p.add_argument("--workers", type=int, default=None, help="parallel workers (decoding / descriptors)")
    p.add_argument("--artifact", default=None, help="trained network for --extractor siamese|cae (see 'train')")


def _add_weights(add, common) -> None:
    p = add("weights", cmd_weights, "import or list pretrained weights kept in the store")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    wi = wsub.add_parser("import", parents=[common], help="check a checkpoint against a timm architecture and keep it")
    wi.add_argument("name", help="timm model name, e.g. inception_v3")
    wi.add_argument("file", help="checkpoint (.pth, .pt, .safetensors)")
    wi.add_argument(
        "--map-by-order", action="store_true", help="match tensors by order and shape when key names differ"
    )
    wsub.add_parser("list", parents=[common], help="weights imported into the store")

    p = add("vocab", cmd_vocab, "visual-word vocabularies kept in the store")
    p.add_argument("action", choices=["list"])


def _add_fit(add, common) -> None:
    def model_names() -> str:  # evaluated only when help is shown (the registry imports scikit-learn and torch)
        from classifiers import list_models

        return "one of: " + ", ".join(list_models())

    p = add("fit", cmd_fit, "fit and judge a model (subject-grouped CV + held-out test subjects)")
    p.add_argument("model", help=model_names)
    p.add_argument("--dataset", default=None)
    p.add_argument("--target", default=None, help="label column or a mapping such as 'binary'")
    p.add_argument("--features", default=None, help="feature sets, e.g. 'inception_v3:diff,+time'")
    p.add_argument(
        "--members",
        default=None,
        help="ensemble members separated by ';' or ',', e.g. 'logistic=inception_v3:diff;svm_rbf=sift_bovw500:concat'",
    )
    p.add_argument("--folds", type=int, default=None, help="CV folds (default: the dataset profile's)")
    p.add_argument(
        "--test-subjects",
        default=None,
        help="held-out test subjects: 'per-class' / 'one-per-class', a fraction like 0.3, 0 (CV only), "
        "or a file of subject keys",
    )
    p.add_argument("--seeds", type=int, default=None, help="repeat over N seeds (default: the dataset profile's)")
    p.add_argument(
        "--device", default=None, choices=["cpu", "cuda"], help="cuda for xgboost / torch heads (fails if absent)"
    )
    p.add_argument("--split", default="auto", choices=["auto", "given"])
    p.add_argument("--search", default="none", choices=["none", "quick", "thorough"])
    p.add_argument("--search-metric", default=None,
                   choices=["f1_macro", "accuracy", "balanced_accuracy", "roc_auc", "log_loss"],
                   help="what --search maximises on subject-grouped inner folds (default f1_macro; "
                        "multi-label roc_auc)")
    p.add_argument("--variance-threshold", type=float, default=None,
                   help="drop features whose variance on the training rows is <= this, inside every fit (default 0: "
                        "constant features only); the counts kept are printed")
    p.add_argument("--exact", action="store_true",
                   help="svm_rbf: the exact kernel SVM at any row count (default: Nystroem approximation above "
                        "20,000 training rows)")
    p.add_argument("--voting", default=None, choices=["soft", "hard"], help="ensemble: soft (default) or hard voting")
    p.add_argument("--member-weights", default=None,
                   help="ensemble: one weight per member in member order, e.g. 2,1,1 (default: equal)")
    p.add_argument("--calibrate", default=None, choices=["none", "sigmoid", "isotonic"],
                   help="ensemble: calibrate every member's probabilities on subject-grouped inner folds "
                        "(default none)")
    p.add_argument(
        "--augment", default=None, action=argparse.BooleanOptionalAction,
        help="training rows only: feature models swap pair order (label mapped) and add noise; finetune "
             "rotates, shifts, scales, flips and varies intensity (default off); xcnn turns a quarter turn "
             "and/or mirrors each batch's scans and difference images alike (default on; --no-augment: the "
             "paper's literal recipe)"
    )
    _add_fit_image_networks(p)
    p.add_argument("--compare-views", default=None, metavar="BACKBONE",
                   help="hierarchical: the IMPC comparison DV only vs LAT only vs multiview (per level, per-class AUC "
                        "mean±std over --seeds, default 5), features from BACKBONE: cae (an autoencoder trained on "
                        "each input), efficientnet, or efficientnet:random offline; missing tables are made first")


def _add_fit_image_networks(p) -> None:
    """``fit`` options of the models trained on images (xcnn, finetune)."""
    p.add_argument(
        "--reference", default=None, choices=["absolute", "relative"], help="xcnn: difference reference (default: both)"
    )
    p.add_argument(
        "--timestamps",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="xcnn: with/without timestamps (default: both)",
    )
    p.add_argument("--epochs", type=int, default=None,
                   help="xcnn / finetune: most training epochs (default xcnn 30, finetune 10; early stopping on "
                        "the validation loss)")
    p.add_argument("--patience", type=int, default=None,
                   help="xcnn / finetune: stop after N epochs without a better validation loss (default xcnn 12, "
                        "finetune 5; 0: never)")
    p.add_argument("--inits", type=int, default=None,
                   help="xcnn: networks per seed, each trained from its own initialisation, their class "
                        "probabilities averaged (default 1, as the paper; 3 steadies the per-seed figures)")
    p.add_argument("--model", dest="backbone", default=None, metavar="TIMM_NAME",
                   help="finetune: the timm network to fine-tune, e.g. efficientnet_b0, convnext_tiny")
    p.add_argument("--input", default=None, choices=["image", "difference", "multiview"],
                   help="finetune: scans, pair difference images or the IMPC multiview composite (default image)")
    p.add_argument("--weights", default=None,
                   help="finetune: hub (pretrained; default), random, a checkpoint file or an imported weights hash")
    p.add_argument("--lr", type=float, default=None,
                   help="finetune: learning rate (default 1e-4; 1e-3 random); xcnn: 1e-3")
    p.add_argument("--batch-size", type=int, default=None, help="finetune: minibatch size (default 32); xcnn: 16")
    p.add_argument("--image-size", type=int, default=None,
                   help="networks trained on images: input side in pixels "
                        "(finetune default: the network's own; xcnn 32)")


def _add_train_and_transfer(add, common) -> None:
    p = add(
        "train",
        cmd_train,
        "train a network on a dataset (Siamese from longitudinal pairs, or a convolutional autoencoder)",
    )
    p.add_argument("network", choices=["siamese", "cae"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--margin", type=float, default=None, help="siamese: contrastive margin")
    p.add_argument("--backbone", default=None, help="siamese: 'small' or a timm model name")
    p.add_argument("--image-size", type=int, default=None,
                   help="side of the square network input, in [32, 512] and divisible by 16 (default 64; the "
                        "spine paper: 224)")
    p.add_argument("--embedding-dim", type=int, default=None,
                   help="siamese: width of the FC7 embedding = of the extracted features (default 128; paper: 1024)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3, Adam; the spine paper: 1e-5 for the Siamese network)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without a better validation loss (default siamese 8, cae 5; 0: never)")
    p.add_argument("--input", dest="train_input", default=None, choices=["image", "multiview", "volume"],
                   help="cae: scans (default) or one input per specimen: the IMPC multiview composite; siamese|cae: "
                        "volume = 3-D networks on the 'volumes' table")
    p.add_argument("--volume-size", type=int, default=None,
                   help="--input volume: side of the cube every volume is resampled into, in [32, 512] divisible by "
                        "16 (default 32)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="--input volume: train on random PATCH^3 patches and describe a volume by the mean over a "
                        "sliding grid (stride PATCH/2); default: patches only when the cube exceeds 64^3 voxels")
    p.add_argument("--spacing", type=float, default=None,
                   help="--input volume: isotropic voxel size in mm (default: the dataset's largest extent / "
                        "--volume-size)")
    p.add_argument("--views", default=None,
                   help="cae with --input multiview: DV or LAT (the specimen's mean image of that view) or DV,LAT "
                        "(the composite; default)")

    p = add("transfer", cmd_transfer, "frozen Siamese features vs scratch vs random vs a strongly supervised "
            "upper bound over growing training sets (spine paper, Fig. 8)")
    p.add_argument("--artifact", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--target", default="label")
    p.add_argument("--train-sizes", default="0.25,0.5,1.0")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat over N seeds (seed, seed+1, ...): the table shows mean ± std, the figure error bars")
    p.add_argument("--epochs", type=int, default=None,
                   help="most epochs of each end-to-end network (scratch, supervised bound; default 40)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of the end-to-end networks (default 32)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])


def _add_predict_and_runs(add, common) -> None:
    p = add("predict", cmd_predict, "score a dataset with a fitted run's saved model")
    p.add_argument("--run", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--members", action="store_true", help="also show each ensemble member's prediction")
    p.add_argument("--write", action="store_true", help="append the scores to 'predictions' with split='predict'")
    p.add_argument("--format", default=None, choices=["table", "csv", "json", "parquet"],
                   help="table on the terminal; with --output the file's suffix decides (.csv, .json, .parquet)")
    p.add_argument("--output", default=None, help="write every prediction to this file (outside the store)")
    p.add_argument("--max-rows", type=int, default=20, help="predictions printed to the terminal (0 = all; default 20)")

    p = add("runs", cmd_runs, "list fitted runs")
    p.add_argument("--limit", type=int, default=50)

    p = add("config", cmd_config, "the options a fit run or a feature table was made with, as a --config file")
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--run", default=None, help="a run id (or a unique prefix), see 'runs'")
    chosen.add_argument("--table", default=None, help="a feature table written by 'extract'")
    p.add_argument("--output", default=None, help="write it to this .toml/.yaml file (default: print TOML)")

    p = add("report", cmd_report, "write an HTML report with plots for a run")
    p.add_argument("run")
    p.add_argument("--output", default=None, help="folder for the report (default: inside the store)")

    p = add("view", cmd_view, "write a static HTML browser of a dataset into the store: subject timelines, pairs "
            "with difference images, filters by label, split and a run's right/wrong predictions")
    p.add_argument("--dataset", required=True)
    p.add_argument("--subjects", type=int, default=None, help="show only the first N subjects (default all)")
    p.add_argument("--reference", default=None, help="show only pairs of this reference mode (default all)")
    p.add_argument("--runs", type=int, default=10, help="latest runs of the dataset offered by the prediction filter")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command, return the exit status (errors printed, never a traceback).

    0 ok, 1 finished with failed inputs, 2 could not run (a ``ChronofeatError``: the message says what
    to do), 3 internal error (the traceback goes to the store's ``logs/``, one line says where),
    130 interrupted, 141 the reader of our output went away (``| head``).
    """
    from store.config_files import parse_command_line, recording_options

    args = parse_command_line(build_parser(), argv)  # with --config FILE: the file's options as defaults
    from features.errors import ChronofeatError

    try:
        with recording_options(args):  # runs and feature tables record the effective options
            return args.func(args)
    except ChronofeatError as exc:
        _note(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _note("interrupted: finished parts are kept; run the same command again to resume")
        return 130
    except BrokenPipeError:
        # The reader closed the pipe: say nothing more, and keep the interpreter's final flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit 3 and a log file
        from store.crashlog import save_traceback

        log = save_traceback(args.store, exc)
        _note(
            f"internal error ({type(exc).__name__}): a bug in chronofeat, not in your input. The traceback is in "
            f"{log}; finished parts are kept. Please report it with that file."
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    ensure_environment()
    sys.exit(main())
