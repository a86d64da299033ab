"""Pretrained network weights: import into the store, list, resolve, load into a timm model.

Where the weights of ``extract --weights SPEC`` come from, in this order:

1. ``SPEC`` is a file (``.pth`` / ``.pt`` / ``.bin`` via ``torch.load(weights_only=True)``, or
   ``.safetensors``) -> that file.
2. ``SPEC`` is 6-64 hex characters -> the imported weights artifact with that hash prefix.
3. ``SPEC == 'hub'`` -> weights imported into this store for the model (``weights import``; the
   newest one when several were imported), else timm's own cache (the Hugging Face Hub cache for
   ``hf_hub_id`` weights, the torch hub cache for URL weights), else a download — the real path for
   users with internet. Offline (``HF_HUB_OFFLINE=1``) or with the network unreachable (a 3 s TCP
   probe) and nothing cached, ``WeightsError`` is raised at once, naming the model, the weights it
   wanted and the two ways to provide them.
4. ``SPEC == 'random'`` -> timm's initialisation with a fixed seed (smoke tests only; never chosen
   silently, and recorded as such).

Imported weights are stored as one ``.safetensors`` artifact of kind ``weights`` keyed exactly like
``timm.create_model(model).state_dict()`` (wrappers unwrapped, ``module.`` prefixes stripped),
so loading them never unpickles anything. The import checks that the tensors fit the architecture
and lists every missing, unexpected and shape-mismatched key when they do not. A checkpoint whose
keys are named differently but whose tensors match the architecture one-to-one *in order and shape*
is accepted only with ``map_by_order=True`` (``weights import --map-by-order``): order matching is a
claim only the user can make about where a file comes from, so it is never tried silently.

Weight identity: ``tensor_sha256`` is a SHA-256 over the names, dtypes, shapes and bytes of every
tensor of the loaded model except its classifier (which no embedding uses): equal digests compute
equal embeddings, whatever file format or source the tensors came from.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from features.errors import ParameterError, StoreError, WeightsError
from store.artifacts import find_artifact, list_artifacts, save_artifact, sha256_file
from store.layout import Store

__all__ = [
    "WeightsRecord",
    "ResolvedWeights",
    "KeyReport",
    "import_weights",
    "list_weights",
    "format_records",
    "weights_table",
    "file_sha256",
    "load_checkpoint",
    "LoadedCheckpoint",
    "check_state_dict",
    "resolve_weights",
    "load_weights_into",
    "state_digest",
    "classifier_prefixes",
    "pretrained_source",
    "check_model_name",
    "offline_mode",
    "meta_model",
    "is_weights_hash",
]

KIND = "weights"
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model_state_dict", "model", "module", "net")
STRIP_PREFIXES = ("_orig_mod.", "module.")
RANDOM_SEED = 0
PROBE_TIMEOUT_S = 3.0
_HEX = re.compile(r"^[0-9a-f]{6,64}$")


# --- records --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRecord:
    """Weights imported into the store (one ``weights`` artifact and its description)."""

    model: str  # timm model name as imported (may carry a pretrained tag: convnext_tiny.fb_in22k)
    architecture: str  # the timm architecture (model name without tag)
    sha256: str  # of the stored .safetensors artifact
    tensor_sha256: str  # digest of the tensors as loaded (see module docstring)
    source_filename: str  # base name of the imported file (never its full path)
    source_sha256: str
    keys: int  # tensors stored
    mapping: str  # 'names' (keys matched by name) | 'order' (--map-by-order)
    wrapper: str  # checkpoint key the state dict was found under, '' for a bare state dict
    classifier: bool  # the classifier layer's weights were imported too
    imported_at: str
    path: Path = field(compare=False)

    @property
    def short(self) -> str:
        return self.sha256[:12]

    def summary_line(self) -> str:
        """One line for ``weights import``: what was stored and how it was matched."""
        how = (
            "keys matched by name" if self.mapping == "names" else "tensors mapped by order and shape (--map-by-order)"
        )
        head = "with classifier" if self.classifier else "without classifier (embeddings only)"
        return (
            f"imported {self.source_filename} as {self.model} weights {self.short} ({self.keys} tensors, {how}, "
            f"{head}; tensor digest {self.tensor_sha256[:12]}). 'extract --weights hub' now uses them for {self.model}."
        )

    def as_dict(self) -> dict:
        """JSON-able description (path as a string)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of one extraction come from (nothing loaded yet)."""

    model: str
    source: str  # 'file' | 'imported' | 'hub-cache' | 'hub-download' | 'random'
    path: Path | None = None
    file_sha256: str | None = None
    hub: str | None = None  # hf_hub_id or URL timm names for the pretrained tag
    artifact: str | None = None  # imported artifact sha256

    def describe(self) -> str:
        """One line for stderr: which weights, from where."""
        if self.source == "random":
            return f"{self.model}: RANDOM weights (seed {RANDOM_SEED}) — untrained, for smoke tests only"
        if self.source == "imported":
            return f"{self.model}: weights imported into the store, artifact {self.artifact[:12]}"
        if self.source == "file":
            return f"{self.model}: weights from file {self.path} (sha256 {self.file_sha256[:12]})"
        where = "cache" if self.source == "hub-cache" else "download"
        return f"{self.model}: pretrained weights {self.hub} (timm, from {where} {self.path})"


@dataclass(frozen=True)
class KeyReport:
    """How a state dict's keys fit an architecture."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, shape in file, shape in model
    classifier_only: bool  # every problem concerns the classifier layer (tolerated, layer dropped)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


# --- model names and timm metadata ----------------------------------------------------------
def check_model_name(model: str) -> str:
    """Return ``model`` if timm knows it (``arch`` or ``arch.tag``), else ``ParameterError``."""
    import difflib

    import timm

    if not isinstance(model, str) or not model:
        raise ParameterError(f"The model name must be a non-empty timm model name. Got {model!r} instead.")
    arch = model.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ParameterError(
            f"timm has no model {model!r}.{hint} List them with python -c \"import timm; "
            "print(timm.list_models('*convnext*'))\"."
        )
    if "." in model:
        tags = {name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*") if "." in name}
        tag = model.split(".", 1)[1]
        if tag not in tags:
            raise ParameterError(
                f"timm has no pretrained tag {tag!r} for {arch!r}; its tags are: {', '.join(sorted(tags)) or 'none'}."
            )
    return model


@lru_cache(maxsize=32)
def meta_model(model: str):
    """timm's ``model`` built on torch's meta device: shapes and module names, no memory, no init cost.

    Shared (cached): callers must not move it or leave hooks on it.
    """
    import timm
    import torch

    check_model_name(model)
    with torch.device("meta"):
        return timm.create_model(model, pretrained=False)


def pretrained_source(model: str) -> dict:
    """timm's pretrained configuration of ``model``: ``hf_hub_id``, ``hf_hub_filename``, ``url``, ``tag``."""
    cfg = dict(getattr(meta_model(model), "pretrained_cfg", {}) or {})
    return {k: cfg.get(k) for k in ("hf_hub_id", "hf_hub_filename", "url", "tag", "architecture", "classifier")}


def classifier_prefixes(model: str) -> tuple[str, ...]:
    """Key prefixes of the classifier layer(s) of ``model`` (``'fc.'``, ``'head.fc.'``...)."""
    names = pretrained_source(model).get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{name}." for name in names)


def _is_classifier(key: str, prefixes: tuple[str, ...]) -> bool:
    return key.startswith(prefixes)


# --- reading checkpoint files ---------------------------------------------------------------
class LoadedCheckpoint(NamedTuple):
    """A checkpoint file's state dict (CPU tensors, prefixes stripped) and the dotted wrapper key it sat
    under (``''`` when it was not wrapped)."""

    state: dict
    wrapper: str


def _read_checkpoint_file(path: Path):
    """The object a checkpoint file holds: safetensors for ``.safetensors``, else ``torch.load(weights_only=True)``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            return safetensors.torch.load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise WeightsError(
            f"Weights file {path.name} could not be read ({type(exc).__name__}: {str(exc)[:300]}). "
            "It must be a PyTorch state dict saved with torch.save (loaded with weights_only=True: no "
            "pickled classes) or a .safetensors file; re-save it with torch.save(model.state_dict(), FILE)."
        ) from exc


def _unwrap(checkpoint) -> LoadedCheckpoint:
    """The state dict inside ``checkpoint`` (at most three ``WRAPPER_KEYS`` deep, timm's order) as stored."""
    import torch

    wrapper = ""
    for _ in range(3):
        if not isinstance(checkpoint, Mapping):
            break
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            break
        inner = next((k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping) and checkpoint.get(k)), None)
        if inner is None:
            break
        wrapper = f"{wrapper}.{inner}" if wrapper else inner
        checkpoint = checkpoint[inner]
    return LoadedCheckpoint(checkpoint, wrapper)


def _stripped(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint file into ``(state_dict, wrapper_key)`` of CPU tensors (a ``LoadedCheckpoint``).

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``
    (no arbitrary code is unpickled). A dict wrapping the state dict under one of ``WRAPPER_KEYS``
    is unwrapped (timm's order: EMA weights first); ``_orig_mod.`` / ``module.`` prefixes are stripped.
    Raises ``WeightsError`` naming the file when it cannot be read or holds no tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist (or is not a file); give the path of a .pth/.pt/.safetensors file."
        )
    checkpoint, wrapper = _unwrap(_read_checkpoint_file(path))
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise WeightsError(f"Weights file {path.name} holds no state dict (found {type(checkpoint).__name__}).")
    non_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise WeightsError(
            f"Weights file {path.name} is a dict whose entries are not all tensors (e.g. {non_tensors[:5]}); "
            f"expected a state dict, or one wrapped under one of {', '.join(WRAPPER_KEYS)}."
        )
    return LoadedCheckpoint({_stripped(key): value for key, value in checkpoint.items()}, wrapper)


def _fmt_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def check_state_dict(model: str, state: Mapping) -> KeyReport:
    """Compare ``state``'s keys and shapes with timm's ``model`` architecture (no weights loaded)."""
    expected = meta_model(model).state_dict()
    prefixes = classifier_prefixes(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = missing + unexpected + [m[0] for m in mismatched]
    classifier_only = bool(problems) and all(_is_classifier(k, prefixes) for k in problems)
    return KeyReport(missing, unexpected, mismatched, classifier_only)


def _order_matches(model: str, state: Mapping) -> bool:
    expected = meta_model(model).state_dict()
    return len(expected) == len(state) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(expected.values(), state.values(), strict=True)
    )


def _report_error(model: str, filename: str, report: KeyReport, *, order_ok: bool) -> WeightsError:
    parts = []
    if report.missing:
        parts.append(f"{len(report.missing)} missing key(s): {_fmt_list(report.missing)}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected key(s): {_fmt_list(report.unexpected)}")
    if report.mismatched:
        shapes = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in report.mismatched]
        parts.append(f"{len(report.mismatched)} shape mismatch(es): {_fmt_list(shapes, 8)}")
    hint = (
        " Its tensors do match the architecture one-to-one in order and shape: if you know the file holds "
        f"this architecture's weights under other names, import it with 'python cli.py weights import {model} "
        f"{filename} --map-by-order'."
        if order_ok
        else f" Check that the file was trained for timm's {model!r} (timm.create_model('{model}').state_dict() "
        "shows the expected keys)."
    )
    return WeightsError(f"Weights file {filename} does not fit timm's {model!r}: " + "; ".join(parts) + "." + hint)


def _fit_state(model: str, state: dict, filename: str, *, map_by_order: bool) -> tuple[dict, str, bool]:
    """``state`` re-keyed/filtered to fit ``model``: (state, mapping, classifier_kept)."""
    expected = meta_model(model).state_dict()
    mapping = "names"
    if map_by_order:
        if not _order_matches(model, state):
            shapes_f = [tuple(v.shape) for v in state.values()]
            shapes_m = [tuple(v.shape) for v in expected.values()]
            first = next(
                (i for i, (a, b) in enumerate(zip(shapes_f, shapes_m, strict=False)) if a != b),
                min(len(shapes_f), len(shapes_m)),
            )
            raise WeightsError(
                f"Weights file {filename} cannot be mapped by order onto timm's {model!r}: the file has "
                f"{len(state)} tensors, the model {len(expected)}; the first difference is at position {first}. "
                "Mapping by order needs the same tensors in the same order with the same shapes."
            )
        state = dict(zip(expected.keys(), state.values(), strict=True))
        mapping = "order"
    report = check_state_dict(model, state)
    if not report.ok and not report.classifier_only:
        raise _report_error(model, filename, report, order_ok=_order_matches(model, state))
    prefixes = classifier_prefixes(model)
    if not report.ok:  # classifier absent or for another number of classes: drop it
        state = {k: v for k, v in state.items() if not _is_classifier(k, prefixes)}
    has_classifier = any(_is_classifier(k, prefixes) for k in state)
    return state, mapping, has_classifier


# --- digests and loading ----------------------------------------------------------------------
def state_digest(state: Mapping, *, exclude_prefixes: tuple[str, ...] = ()) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes of the tensors of ``state``."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        if exclude_prefixes and key.startswith(exclude_prefixes):
            continue
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _load_fitted(network, model: str, state: dict) -> None:
    """Load ``state`` (already fitted to ``model``) into ``network``; only the classifier may be absent."""
    result = network.load_state_dict(state, strict=False)
    prefixes = classifier_prefixes(model)
    bad = [k for k in result.missing_keys if not _is_classifier(k, prefixes)] + list(result.unexpected_keys)
    if bad:
        raise WeightsError(f"Weights for {model!r} left keys unloaded: {_fmt_list(bad)}.")


def load_weights_into(network, resolved: ResolvedWeights) -> str:
    """Load the weights ``resolved`` names into ``network`` (a timm model of ``resolved.model``).

    Returns the ``tensor_sha256`` identity of the loaded network. Files are checked against the
    architecture first (``WeightsError`` listing the keys that do not fit). ``random`` and hub
    weights are expected to have been put in place when ``network`` was created (see
    ``extractors._cnn_model.build_network``); for them only the digest is computed.
    """
    if resolved.source in ("file", "imported"):
        state, _ = load_checkpoint(resolved.path)
        label = resolved.path.name if resolved.source == "file" else f"artifact {resolved.artifact[:12]}"
        state, _, _ = _fit_state(resolved.model, state, label, map_by_order=False)
        _load_fitted(network, resolved.model, state)
    return state_digest(network.state_dict(), exclude_prefixes=classifier_prefixes(resolved.model))


# --- import and list ------------------------------------------------------------------------
def _record(artifact) -> WeightsRecord:
    meta = artifact.meta
    return WeightsRecord(
        model=meta["model"], architecture=meta["architecture"], sha256=artifact.sha256,
        tensor_sha256=meta["tensor_sha256"], source_filename=meta["source_filename"],
        source_sha256=meta["source_sha256"], keys=int(meta["keys"]), mapping=meta["mapping"],
        wrapper=meta.get("wrapper", ""), classifier=bool(meta["classifier"]),
        imported_at=meta["imported_at"], path=artifact.path,
    )


def import_weights(store: Store, model: str, file: str | os.PathLike, *, map_by_order: bool = False) -> WeightsRecord:
    """Check ``file`` fits timm's ``model`` and store it as a ``weights`` artifact; return its record.

    The stored artifact is a ``.safetensors`` file keyed like timm's ``state_dict()``; its meta
    records the architecture, the artifact and source SHA-256, the source file name, the key count,
    how keys were matched and the tensor digest. Importing the same tensors again returns the
    existing record. ``map_by_order`` (explicit only) renames the file's tensors to the model's keys
    when both list the same shapes in the same order. ``WeightsError`` lists every key that does not fit.
    """
    import safetensors.torch
    import timm
    import torch

    check_model_name(model)
    path = Path(file)
    state, wrapper = load_checkpoint(path)
    state, mapping, has_classifier = _fit_state(model, state, path.name, map_by_order=map_by_order)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        network = timm.create_model(model, pretrained=False)
    _load_fitted(network, model, state)
    tensor_sha = state_digest(network.state_dict(), exclude_prefixes=classifier_prefixes(model))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    # one metadata entry: safetensors writes a map's entries in hash order, which would change the bytes
    data = safetensors.torch.save(tensors, metadata={"chronofeat": f"weights/1 model={model}"})
    meta = {
        "model": model,
        "architecture": model.split(".", 1)[0],
        "tensor_sha256": tensor_sha,
        "source_filename": path.name,
        "source_sha256": sha256_file(path),
        "keys": len(tensors),
        "mapping": mapping,
        "wrapper": wrapper,
        "classifier": has_classifier,
        "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return _record(save_artifact(store, KIND, data, suffix=".safetensors", meta=meta))


def list_weights(store: Store) -> list[WeightsRecord]:
    """Every weights artifact imported into ``store``, oldest first."""
    return [_record(a) for a in list_artifacts(store, KIND) if "tensor_sha256" in a.meta]


def weights_table(store: Store):
    """The imported weights of ``store`` as an Arrow table (one row per artifact, oldest first)."""
    import pyarrow as pa

    records = list_weights(store)
    columns = (
        "sha256",
        "model",
        "keys",
        "classifier",
        "mapping",
        "source_filename",
        "source_sha256",
        "tensor_sha256",
        "imported_at",
    )
    return pa.table(
        {
            "sha256": pa.array([r.short for r in records], pa.string()),
            "model": pa.array([r.model for r in records], pa.string()),
            "keys": pa.array([r.keys for r in records], pa.int32()),
            "classifier": pa.array([r.classifier for r in records], pa.bool_()),
            "mapping": pa.array([r.mapping for r in records], pa.string()),
            "source_filename": pa.array([r.source_filename for r in records], pa.string()),
            "source_sha256": pa.array([r.source_sha256[:12] for r in records], pa.string()),
            "tensor_sha256": pa.array([r.tensor_sha256[:12] for r in records], pa.string()),
            "imported_at": pa.array([r.imported_at for r in records], pa.string()),
        }
    ).select(list(columns))


def format_records(records: list[WeightsRecord]) -> str:
    """A plain-text table of ``records`` for ``weights list``."""
    if not records:
        return "No weights imported. Import a checkpoint with: python cli.py weights import MODEL FILE"
    header = ("sha256", "model", "keys", "classifier", "mapping", "source file", "imported at")
    rows = [
        (r.short, r.model, str(r.keys), "yes" if r.classifier else "no", r.mapping, r.source_filename, r.imported_at)
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# --- resolution -------------------------------------------------------------------------------
def is_weights_hash(spec: str) -> bool:
    """True when ``spec`` reads as (a prefix of) an imported weights hash: 6-64 lower-case hex digits."""
    return isinstance(spec, str) and bool(_HEX.match(spec))


def offline_mode() -> bool:
    """True when Hugging Face offline mode is on (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub, "HF_HUB_OFFLINE", False))


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read from the environment now (not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _torch_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_candidates(cfg: dict) -> tuple[str, str | None, list[str]]:
    repo, _, revision = cfg["hf_hub_id"].partition("@")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    return repo, revision or None, names


def _cached_hub_file(cfg: dict) -> Path | None:
    """The cached weights file timm would load for ``cfg``, or None; never touches the network."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, revision, names = _hf_candidates(cfg)
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=str(_hf_cache_dir()), revision=revision)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.get("url"):
        candidate = _torch_checkpoint_dir() / os.path.basename(urlparse(cfg["url"]).path)
        if candidate.is_file():
            return candidate
    return None


def _probe_host(cfg: dict) -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return parsed.hostname or "", parsed.port or 80
    if cfg.get("hf_hub_id"):
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        endpoint = cfg.get("url") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def _network_reason(cfg: dict) -> str | None:
    """None when the weights host accepts a TCP connection within 3 s, else why not."""
    host, port = _probe_host(cfg)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({type(exc).__name__}: {exc})"


def _wanted(cfg: dict) -> str:
    if cfg.get("hf_hub_id"):
        repo, revision, names = _hf_candidates(cfg)
        return f"Hugging Face Hub '{repo}'{'@' + revision if revision else ''} (file {' or '.join(names)})"
    return f"URL {cfg.get('url')}"


def _unavailable(model: str, cfg: dict, reason: str) -> WeightsError:
    caches = [f"Hugging Face cache {_hf_cache_dir()}"] if cfg.get("hf_hub_id") else []
    if cfg.get("url"):
        caches.append(f"torch hub cache {_torch_checkpoint_dir()}")
    return WeightsError(
        f"No pretrained weights for model {model!r} are available: timm's pretrained tag "
        f"{cfg.get('architecture') or model.split('.')[0]}.{cfg.get('tag') or 'default'} wants {_wanted(cfg)}, "
        f"which is not in the {' nor the '.join(caches)}, and {reason}. Provide the weights one of two ways: "
        f"import a checkpoint once with 'python cli.py weights import {model} FILE', or pass "
        f"'--weights FILE' to extract (a .pth/.pt state dict or .safetensors keyed like timm's {model!r}). "
        "('--weights random' runs with untrained weights, for smoke tests only.)"
    )


def _download(model: str, cfg: dict) -> Path:
    """Download timm's pretrained weights for ``cfg`` into the usual cache; ``WeightsError`` on failure."""
    try:
        if cfg.get("hf_hub_id"):
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            repo, revision, names = _hf_candidates(cfg)
            for name in names:
                try:
                    return Path(
                        hf_hub_download(repo, name, revision=revision, cache_dir=str(_hf_cache_dir()), etag_timeout=10)
                    )
                except EntryNotFoundError:
                    continue
            raise WeightsError(f"{_wanted(cfg)} has none of those files.")
        import torch.hub

        target = _torch_checkpoint_dir() / os.path.basename(urlparse(cfg["url"]).path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg["url"], str(target), progress=sys.stderr.isatty())
        return target
    except WeightsError:
        raise
    except Exception as exc:  # network libraries raise many types
        raise _unavailable(model, cfg, f"the download failed ({type(exc).__name__}: {str(exc)[:200]})") from exc


@lru_cache(maxsize=64)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, cached while its size and modification time are unchanged."""
    stat = os.stat(path)
    return _file_sha(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def resolve_weights(store: Store | None, model: str, spec: str, *, download: bool = True) -> ResolvedWeights:
    """Decide where the weights of ``model`` come from for ``--weights spec`` (module docstring order).

    Reads no image and loads no tensor. With ``spec='hub'`` and nothing imported or cached, downloads
    when allowed and the network answers; otherwise raises ``WeightsError`` within seconds naming the
    model, the weights timm wanted, and ``weights import`` / ``--weights FILE`` as the two remedies.
    """
    check_model_name(model)
    arch = model.split(".", 1)[0]
    if spec == "random":
        return ResolvedWeights(model, "random")
    if spec == "hub":
        if store is not None:
            imported = [r for r in list_weights(store) if r.model == model]
            if imported:
                chosen = imported[-1]
                return ResolvedWeights(model, "imported", chosen.path, chosen.sha256, artifact=chosen.sha256)
        cfg = pretrained_source(model)
        if not (cfg.get("hf_hub_id") or cfg.get("url")):
            raise WeightsError(
                f"timm has no pretrained weights for {model!r}. Import a checkpoint with 'python cli.py weights "
                f"import {model} FILE' or pass '--weights FILE' (or '--weights random' for a smoke test)."
            )
        hub = cfg.get("hf_hub_id") or cfg.get("url")
        cached = _cached_hub_file(cfg)
        if cached is not None:
            return ResolvedWeights(model, "hub-cache", cached, hub=hub)
        if offline_mode():
            raise _unavailable(model, cfg, "offline mode is on (HF_HUB_OFFLINE=1) so nothing is downloaded")
        if not download:
            raise _unavailable(model, cfg, "downloading was not allowed")
        reason = _network_reason(cfg)
        if reason is not None:
            raise _unavailable(model, cfg, reason)
        print(f"chronofeat: downloading pretrained weights for {model} from {_wanted(cfg)}", file=sys.stderr)
        return ResolvedWeights(model, "hub-download", _download(model, cfg), hub=hub)
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return ResolvedWeights(model, "file", path.resolve(), file_sha256(path))
    if _HEX.match(str(spec)) and store is not None:
        try:
            artifact = find_artifact(store, KIND, str(spec))
        except StoreError as exc:
            raise WeightsError(f"No imported weights match {spec!r}: {exc} See 'python cli.py weights list'.") from None
        record = _record(artifact)
        if record.architecture != arch:
            raise WeightsError(
                f"Imported weights {record.short} are for {record.model!r}, not {model!r}; pick weights of the "
                "same architecture (see 'python cli.py weights list')."
            )
        return ResolvedWeights(model, "imported", record.path, record.sha256, artifact=record.sha256)
    raise WeightsError(
        f"--weights {spec!r} is neither 'hub', 'random', an existing checkpoint file, nor the hash of weights "
        "imported into this store ('python cli.py weights list' shows them)."
    )
