"""Pretrained CNN embeddings (Inception-v3, EfficientNet, ConvNeXt, any timm model), batched on GPU or CPU.

``create_extractor("cnn", model="efficientnet_b0", input="multiview", layer="block3b_dwconv")``;
on the command line ``extract --extractor inception|efficientnet|convnext|cnn [--model TIMM_NAME]``.

Inputs: ``image`` (one row per scan, key ``scan_id``), ``difference`` (the registered difference
image of each pair of ``reference`` mode absolute / relative / given, key ``pair_id``), ``multiview``
(the IMPC composite per specimen and time, key ``specimen_id``). ``views`` (IMPC's DV-only / LAT-only /
multiview comparison) keeps only DV or LAT images: with ``image`` input only the scans of those views
(table ``..._dv`` / ``..._lat``); with ``multiview`` input the specimen's mean DV (or LAT) image in place
of the composite (table ``<model>_specimen_dv`` / ``_specimen_lat``; DV and LAT together is the
composite, ``<model>_multiview``). Preprocessing and the intensity
policy are described in ``extractors._cnn_data`` and ``features.intensity``; weights resolution in
``store.weights``; layer names in ``extractors._cnn_model``.

Table identity. A table holds rows of one configuration: model, input (+ reference), layer, weights,
numeric precision, intensity mode, preprocessing version. Its name is readable:
``<model>[_diff_<reference>|_multiview|_specimen_<view>][_<views>][_<layer>][_random][_bf16|_fp16][_<hash>]``
— the hash (8 hex)
appears only for settings the name does not spell (weights from a file or a chosen artifact, a
non-default intensity mode). Batch size, device, workers and ``compile`` do not change the identity:
they change only the order of floating-point operations (results agree to 1e-4 relative or better), and
fp32 on CUDA is kept true fp32 (TF32 off). Precision *does*: bf16/fp16 autocast changes values at the
1e-3 level, so the resolved precision is part of the identity — ``auto`` resolves to fp32 on CPU
(name unchanged) and bf16 on CUDA (``_bf16`` table), and runs on the two never mix rows.
``weights='hub'`` means "this architecture's pretrained weights" (imported into the store, else
timm's cache, else a download); which tensors were used is recorded in every part
(``chronofeat.weights``: source, hub tag or file, ``tensor_sha256``) and a later run that resolves to
different tensors for the same table is refused (``ConfigMismatchError``) instead of mixing rows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from extractors._cnn_data import (
    INPUT_COLUMNS,
    Preprocess,
    UnitImages,
    make_loader,
    preprocess_image,
    unit_path,
)
from extractors._cnn_model import (
    Embedder,
    arch_info,
    build_network,
    choose_device,
    choose_precision,
    layer_width,
    resolve_layer,
)
from extractors._registry import register_cli_alias, register_extractor
from extractors.base import ExtractedBatch, Extractor, ParamRule, int_in, one_of
from features.errors import (
    BackendUnavailableError,
    ConfigMismatchError,
    DatasetError,
    InputError,
    ParameterError,
)
from features.multiview import parse_views, view_group
from store.cores import usable_cores
from store.failures import Failure
from store.layout import TABLE_NAME_PATTERN, Store
from store.provenance import params_hash
from store.tables import table_kv_metadata
from store.units import pair_units, scan_units, specimen_units
from store.weights import (
    ResolvedWeights,
    check_model_name,
    file_sha256,
    is_weights_hash,
    resolve_weights,
)

__all__ = ["CNNEmbedding", "SHORT_NAMES", "build_cnn_from_options", "PREPROCESS_VERSION"]

SHORT_NAMES = {"inception": "inception_v3", "efficientnet": "efficientnet_b0", "convnext": "convnext_tiny"}
INPUTS = ("image", "difference", "multiview")
REFERENCES = ("absolute", "relative", "given")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INTENSITIES = ("auto", "percentile")
PREPROCESS_VERSION = "fit-pad-nocrop/1"


def _non_empty_str(value) -> bool:
    return isinstance(value, str) and bool(value)


def _is_device(value) -> bool:
    return isinstance(value, str) and (
        value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )


def _views_ok(value) -> bool:
    try:
        parse_views(value)
    except InputError:
        return False
    return value is None or isinstance(value, str)


def _sanitise(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    return "_".join(part for part in out.split("_") if part)


@register_extractor("cnn")
class CNNEmbedding(Extractor):
    """Embeddings of a pretrained timm network (see the module docstring).

    Parameters: ``model`` (timm name), ``input`` (image | difference | multiview), ``reference``
    (absolute | relative | given; difference input only), ``layer`` ('pooled' or a module name),
    ``weights`` ('hub' | 'random' | checkpoint path | imported-weights hash), ``device``
    (auto | cpu | cuda[:N]), ``batch_size``, ``workers`` (DataLoader processes; None = auto),
    ``precision`` (auto | fp32 | bf16 | fp16), ``compile`` (torch.compile the network),
    ``intensity`` (auto = DICOM window else percentiles | percentile), ``views`` (None = every view |
    'DV' | 'LAT' | 'DV,LAT'; image and multiview inputs, see the module docstring).
    """

    def __init__(
        self,
        *,
        model: str = "inception_v3",
        input: str = "image",
        reference: str = "absolute",
        layer: str = "pooled",
        weights: str = "hub",
        device: str = "auto",
        batch_size: int = 32,
        workers: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        intensity: str = "auto",
        views: str | None = None,
    ):
        self.model = model
        self.input = input
        self.reference = reference
        self.layer = layer
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.precision = precision
        self.compile = compile
        self.intensity = intensity
        self.views = views

    # --- configuration -------------------------------------------------------------------
    def validate_params(self) -> None:
        self.check_param_rules({"model": ParamRule("a timm model name (str)", _non_empty_str)})
        check_model_name(self.model)
        self.check_param_rules({
            "input": one_of(INPUTS, kind=f"a str among {set(INPUTS)}"),
            "reference": one_of(REFERENCES, kind=f"a str among {set(REFERENCES)}"),
            "layer": ParamRule("'pooled' or a module name (str)", _non_empty_str),
        })
        resolve_layer(self.model, self.layer)
        self.check_param_rules({
            "weights": ParamRule("'hub', 'random', a checkpoint file path or an imported weights hash", _non_empty_str),
            "device": ParamRule("a str among {'auto', 'cpu', 'cuda', 'cuda:N'}", _is_device),
            "batch_size": int_in(1, 4096),
            "workers": int_in(0, 64, optional=True, kind="None or an int in [0, 64]"),
            "precision": one_of(PRECISIONS, kind=f"a str among {set(PRECISIONS)}"),
            "compile": ParamRule("a bool", lambda v: isinstance(v, (bool, np.bool_))),
            "intensity": one_of(INTENSITIES, kind=f"a str among {set(INTENSITIES)}"),
        })
        self.check_param_rules({"views": ParamRule("None, 'DV', 'LAT' or 'DV,LAT'", _views_ok)})
        if self.views is not None and self.input == "difference":
            raise ParameterError(
                "views applies to input='image' or 'multiview'; a difference image is of one scan's view already. "
                "Drop --views or use --input image / multiview."
            )
        if self.input == "multiview" and self.intensity != "auto":
            raise ParameterError(
                "intensity='percentile' has no effect with input='multiview': the composite scales every view "
                "image itself (features.multiview). Leave intensity at 'auto'."
            )

    def chosen_views(self) -> tuple[str, ...] | None:
        """The views this configuration keeps: None (every view; the composite for multiview input),
        ``("DV",)``, ``("LAT",)`` or, for image input, ``("DV", "LAT")``."""
        chosen = parse_views(self.views)
        if self.input == "multiview" and chosen == ("DV", "LAT"):
            return None  # both views of a specimen are the composite
        return chosen

    def key_column(self):
        return {"image": "scan_id", "difference": "pair_id", "multiview": "specimen_id"}.get(self.input, "scan_id")

    def _resolved_device(self) -> str:
        return choose_device(self.device)

    def _resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        import torch

        # resolved without raising: an unavailable explicit device is reported by prepare()
        device = (
            "cuda" if self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
        return choose_precision("auto", device)

    def _weights_identity(self) -> str:
        if self.weights in ("hub", "random"):
            return "pretrained" if self.weights == "hub" else "random"
        from pathlib import Path

        path = Path(self.weights).expanduser()
        if path.is_file():
            return f"file:{file_sha256(path)}"
        if is_weights_hash(self.weights):
            return f"artifact:{self.weights.lower()}"
        return f"missing:{self.weights}"

    def config(self) -> dict:
        """Identity of this configuration (what changes values; see the module docstring)."""
        return {
            "extractor": self.name,
            "model": self.model,
            "input": self.input,
            "reference": self.reference if self.input == "difference" else None,
            "layer": resolve_layer(self.model, self.layer),
            "weights": self._weights_identity(),
            "precision": self._resolved_precision(),
            "intensity": self.intensity if self.input != "multiview" else "composite",
            "preprocess": PREPROCESS_VERSION,
            **({"views": "+".join(self.chosen_views())} if self.chosen_views() else {}),
        }

    def table_name(self) -> str:
        identity = self.config()
        parts = [_sanitise(self.model)]
        if self.input == "difference":
            parts.append(f"diff_{self.reference}")
        elif self.input == "multiview":
            parts.append(f"specimen_{self.chosen_views()[0].lower()}" if self.chosen_views() else "multiview")
        if self.input == "image" and self.chosen_views():
            parts.append("_".join(v.lower() for v in self.chosen_views()))
        if identity["layer"] != "pooled":
            parts.append(_sanitise(identity["layer"]))
        if identity["weights"] == "random":
            parts.append("random")
        if identity["precision"] != "fp32":
            parts.append(identity["precision"])
        unnamed = {}
        if identity["weights"] not in ("pretrained", "random"):
            unnamed["weights"] = identity["weights"]
        if identity["intensity"] not in ("auto", "composite"):
            unnamed["intensity"] = identity["intensity"]
        if unnamed:
            parts.append(params_hash(unnamed)[:8])
        name = "_".join(parts)
        if not name[:1].isalpha():
            name = f"cnn_{name}"
        if not TABLE_NAME_PATTERN.match(name):
            name = f"{name[:54].rstrip('_')}_{params_hash(identity)[:8]}"
        return name

    def output_schema(self) -> pa.Schema:
        width = layer_width(self.model, self.layer)
        return pa.schema(
            [
                (self.key_column(), pa.string()),
                ("source_sha256", pa.string()),
                ("embedding", pa.list_(pa.float32(), width)),
            ]
        )

    def provenance(self) -> dict:
        info = arch_info(self.model)
        out = {
            "weights": getattr(self, "weights_info_", {"spec": self.weights}),
            "run": getattr(self, "run_info_", {}),
            "preprocess": {
                **self._preprocess().describe(),
                "mean": list(info.mean),
                "std": list(info.std),
                "timm_crop_pct_ignored": info.crop_pct,
                "version": PREPROCESS_VERSION,
            },
            "settings": self.get_params(deep=False),
            "views": "+".join(self.chosen_views()) if self.chosen_views() else "all",
        }
        return out

    def _preprocess(self) -> Preprocess:
        info = arch_info(self.model)
        views = self.chosen_views() if self.input == "multiview" else None
        return Preprocess(size=tuple(info.input_size[1:]), interpolation=info.interpolation, intensity=self.intensity,
                          views=views)

    def preprocess(
        self, image: np.ndarray, *, window_center: float | None = None, window_width: float | None = None
    ) -> np.ndarray:
        """One image (any units, greyscale or RGB) -> the ``(3, H, W)`` [0, 1] input this extractor feeds its
        network."""
        return preprocess_image(image, self._preprocess(), window_center=window_center, window_width=window_width)

    # --- work ------------------------------------------------------------------------------
    def units(self, store: Store, dataset: str) -> pa.Table:
        if self.input == "image":
            units = scan_units(store, dataset)
        elif self.input == "difference":
            units = self._pair_units(store, dataset)
        else:
            units = specimen_units(store, dataset)
        units = self._keep_views(units)
        if "dataset" not in units.column_names:
            units = units.append_column("dataset", pa.array([dataset] * units.num_rows, type=pa.string()))
        return units

    def _keep_views(self, units: pa.Table) -> pa.Table:
        """``units`` cut to the chosen views: scans of those views; specimens with an image of one of them
        (a specimen's ``source_sha256`` stays the hash of all its scans: a changed scan of another view
        only recomputes its row)."""
        chosen = self.chosen_views()
        if chosen is None or self.input == "difference":
            return units
        if self.input == "image":
            keep = [view_group(v) in chosen for v in units.column("view").to_pylist()]
        else:
            keep = [any(view_group(v) in chosen for v in views) for views in units.column("views").to_pylist()]
        if units.num_rows and not any(keep):
            column = units.column("view" if self.input == "image" else "views").to_pylist()
            seen = sorted({str(v) for v in column} if self.input == "image" else {str(v) for vs in column for v in vs})
            raise DatasetError(
                f"No scan of the dataset has a {' or '.join(chosen)} view (its views: {', '.join(seen)}); "
                "choose --views among those, or drop --views."
            )
        return units.filter(pa.array(keep, type=pa.bool_()))

    def _pair_units(self, store: Store, dataset: str) -> pa.Table:
        try:
            return pair_units(store, dataset, self.reference)
        except DatasetError as exc:
            from store.sql import query

            try:
                modes = query(
                    store,
                    f"SELECT DISTINCT reference_mode FROM pairs WHERE dataset = '{dataset.replace(chr(39), '')}' "
                    "ORDER BY 1",
                )
                modes = modes.column(0).to_pylist()
            except Exception:  # the pairs table itself is missing: the original message says so
                raise exc from None
            if not modes:
                raise
            raise DatasetError(
                f"Dataset {dataset!r} has no {self.reference!r} pairs; its pairs are: {', '.join(modes)}. "
                f"Pass --reference {modes[0]} (reference='{modes[0]}')."
            ) from None

    def _check_multiview(self, pending: pa.Table) -> None:
        seen = {str(v).strip().upper() for views in pending.column("views").to_pylist() for v in views}
        if not {view_group(v) for v in seen} - {None}:
            raise DatasetError(
                f"Multiview input needs DV and/or LAT views; this dataset's scans have views {sorted(seen)}. "
                "Use --input image (or difference) for it."
            )

    def prepare(self, store: Store, pending: pa.Table) -> None:
        """Resolve device, precision and weights, load the network — all before any image is read."""
        import torch

        self.validate_params()
        device = self._resolved_device()
        precision = self._resolved_precision()
        if self.input == "multiview" and pending.num_rows:
            self._check_multiview(pending)
        resolved = resolve_weights(store, self.model, self.weights)
        table = self.table_name()
        print(f"chronofeat: {resolved.describe()}", file=sys.stderr)
        workers = self._workers(device)
        if device == "cpu":
            # every core busy, none shared: an OpenMP op waits for its slowest thread, so a thread that
            # shares its core with a decoding worker slows the whole forward pass
            torch.set_num_threads(max(1, usable_cores() - workers))
        net, digest = build_network(self.model, resolved)
        self._check_same_weights(store, table, digest, resolved)
        info = arch_info(self.model)
        layer = resolve_layer(self.model, self.layer)
        embedder = Embedder(net, info, layer)
        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (identity, see module doc)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        # channels_last: ~4x faster for EfficientNet / Inception on oneDNN CPUs, the fast path on CUDA too
        embedder.to(device, memory_format=torch.channels_last)
        if self.compile:
            try:
                embedder.compile()
            except ParameterError:
                raise
            except Exception as exc:
                raise BackendUnavailableError(
                    f"torch.compile is not usable here ({exc}); run without --compile."
                ) from exc
        self.network_ = net
        self.embedder_ = embedder
        self.device_ = device
        self.precision_ = precision
        self.workers_ = workers
        self.weights_info_ = {
            "spec": self.weights,
            "source": resolved.source,
            "model": self.model,
            "hub": resolved.hub,
            "file": resolved.path.name if resolved.path is not None and resolved.source == "file" else None,
            "file_sha256": resolved.file_sha256,
            "artifact": resolved.artifact,
            "tensor_sha256": digest,
            "random_seed": 0 if resolved.source == "random" else None,
        }
        self.run_info_ = {
            "device": device,
            "precision": precision,
            "batch_size": int(self.batch_size),
            "workers": workers,
            "compile": bool(self.compile),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        print(
            f"chronofeat: {self.name} {self.model} ({self.input}, layer {layer}) on {device} [{precision}, "
            f"batch {self.batch_size}, {workers} loader worker(s), {torch.get_num_threads()} torch thread(s)"
            f"{', compiled' if self.compile else ''}] -> table {table}",
            file=sys.stderr,
        )

    def _workers(self, device: str) -> int:
        """DataLoader processes: on CUDA the CPU only decodes (cores - 1, at most 8); on a CPU the
        network needs the cores, and decoding (a few ms per image) is cheaper inline than a process
        that takes a core from every forward pass — so none up to 4 cores, then one per 8 cores."""
        if self.workers is not None:
            return int(self.workers)
        cores = usable_cores()
        if device.startswith("cuda"):
            return max(1, min(8, cores - 1))
        return 0 if cores <= 4 else min(4, cores // 8 or 1)

    def _check_same_weights(self, store: Store, table: str, digest: str, resolved: ResolvedWeights) -> None:
        recorded = table_kv_metadata(store, table).get("chronofeat.weights")
        if not recorded:
            return
        try:
            before = json.loads(recorded)
        except ValueError:
            return
        if before.get("tensor_sha256") and before["tensor_sha256"] != digest:
            raise ConfigMismatchError(
                f"Table {table!r} was computed with weights {before['tensor_sha256'][:12]} (source "
                f"{before.get('source')}: {before.get('hub') or before.get('file') or before.get('artifact')}); this "
                f"run resolved different weights {digest[:12]} ({resolved.describe()}). Rows of different weights "
                "are never mixed: pass --weights FILE or --weights <imported hash> to write a separate table, "
                "or remove the conflicting import."
            )

    def _autocast(self):
        import contextlib

        import torch

        if self.precision_ == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision_ == "bf16" else torch.float16
        return torch.autocast(device_type="cuda" if self.device_.startswith("cuda") else "cpu", dtype=dtype)

    def embed(self, batch) -> np.ndarray:
        """Embeddings (B, d) float32 of a batch ``(B, 3, H, W)`` in [0, 1] (a CPU tensor), on the prepared device."""
        import torch

        cuda = self.device_.startswith("cuda")
        x = batch.to(self.device_, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            try:
                out = self.embedder_(x)
            except Exception as exc:
                if self.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                    raise BackendUnavailableError(
                        f"torch.compile failed while compiling {self.model} ({type(exc).__name__}: {str(exc)[:300]}); "
                        "run without --compile."
                    ) from exc
                raise
        return out.float().cpu().numpy()

    def embedding_rows(self, keys: list[str], shas: list[str], vectors: np.ndarray) -> pa.Table:
        """Rows of ``output_schema()`` from unit ``keys``, their ``source_sha256`` and embeddings ``vectors`` (n, d).

        ``ParameterError`` when the layer gave another width than the schema's.
        """
        schema = self.output_schema()
        width = schema.field("embedding").type.list_size
        if vectors.shape[1] != width:
            raise ParameterError(f"{self.model} layer {self.layer!r} gave {vectors.shape[1]} values, expected {width}.")
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        return pa.Table.from_arrays(
            [pa.array(keys, type=pa.string()), pa.array(shas, type=pa.string()),
             pa.FixedSizeListArray.from_arrays(flat, width)],
            schema=schema,
        )

    def transform(self, store: Store, pending: pa.Table) -> Iterator[ExtractedBatch]:
        if not hasattr(self, "embedder_"):
            self.prepare(store, pending)
        key = self.key_column()
        columns = [c for c in INPUT_COLUMNS[self.input] if c in pending.column_names]
        units = pending.select(columns).to_pylist()
        dataset = UnitImages(store, units, self.input, self._preprocess())
        loader = make_loader(
            dataset, batch_size=int(self.batch_size), workers=self.workers_, pin_memory=self.device_.startswith("cuda")
        )
        schema = self.output_schema()
        stage = f"extract:{self.name}"
        for indices, batch, failed in loader:
            failures = [
                Failure(
                    key=units[i][key], dataset=units[i].get("dataset") or "",
                    path=unit_path(units[i]), stage=stage, error_class=cls, message=message,
                )
                for i, cls, message in failed
            ]
            if batch is not None:
                keys = [units[i][key] for i in indices]
                rows = self.embedding_rows(keys, [units[i]["source_sha256"] for i in indices], self.embed(batch))
            else:
                rows = schema.empty_table()
            yield ExtractedBatch(rows=rows, failures=failures)


# --- command line -----------------------------------------------------------------------------
_OPTION_KEYS = (
    "input",
    "reference",
    "layer",
    "weights",
    "device",
    "batch_size",
    "workers",
    "precision",
    "compile",
    "intensity",
    "views",
)


def build_cnn_from_options(alias: str, options: dict) -> CNNEmbedding:
    """The extractor ``extract --extractor ALIAS`` means, from parsed CLI ``options`` (None = not given).

    ``inception`` / ``efficientnet`` / ``convnext`` pick timm's ``inception_v3`` / ``efficientnet_b0`` /
    ``convnext_tiny`` unless ``--model`` names another; ``cnn`` needs ``--model``. ``--reference`` is
    refused unless ``--input difference``.
    """
    options = options or {}
    foreign = sorted(
        k for k, v in options.items()
        if v is not None and v is not False and k not in (*_OPTION_KEYS, "model", "extractor", "intensity")
    )
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise ParameterError(
            f"extract --extractor {alias} does not use {flags}; remove them (they belong to other extractors)."
        )
    model = options.get("model") or SHORT_NAMES.get(alias)
    if model is None:
        raise ParameterError("extract --extractor cnn needs --model TIMM_NAME (e.g. --model resnet50).")
    model = SHORT_NAMES.get(model, model)
    params = {"model": model}
    for key in _OPTION_KEYS:
        if options.get(key) is not None:
            params[key] = options[key]
    if "reference" in params and params.get("input", "image") != "difference":
        raise ParameterError("--reference applies only to --input difference.")
    extractor = CNNEmbedding(**params)
    extractor.validate_params()
    return extractor


for _alias in ("cnn", *SHORT_NAMES):
    register_cli_alias(_alias, lambda options, _alias=_alias: build_cnn_from_options(_alias, options))
