"""Stored paths: how a file's path under its dataset root is written into tables, and found again.

A stored path is the POSIX path relative to the dataset root, component by component, except for
components that must not or cannot be stored as they are. Those become a *marker*
``[<label>~<tag>]<suffix>``:

- a component equal to or containing one of the file's identifying values (PatientID, patient name
  or its parts, birth date, other IDs, the manifest's ``subject``), compared case-insensitively on
  letters and digits only: label ``redacted``;
- a component that is not valid UTF-8 (Parquet strings must be): label = the name with each
  undecodable byte shown as U+FFFD (``redacted`` if that still holds an identifying value);
- a component that already has the shape of a marker, so that a marker is never ambiguous.

``<suffix>`` keeps an image file extension (``.dcm``, ``.png``...), never anything else. ``<tag>`` is
the first 12 hex characters of HMAC-SHA256(store secret, domain + the component's raw bytes): without
the secret it says nothing about the name; with it ``PathResolver`` finds the entry of the parent
folder carrying that tag, so pixels load from the stored path alone (lossless while the files stay
where they were ingested from).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath

from features.errors import InputError

__all__ = [
    "REDACTED_LABEL",
    "IdentifyingValues",
    "component_tag",
    "stored_path",
    "redact_components",
    "redacted_tags",
    "is_marker",
    "PathResolver",
    "check_relative",
]

REDACTED_LABEL = "redacted"
_TAG_DOMAIN = b"chronofeat.path-component\0"
_TAG_LENGTH = 12
_MARKER = re.compile(r"^\[(?P<label>[^\[\]~/]*)~(?P<tag>[0-9a-f]{12})\](?P<suffix>\.[A-Za-z0-9]{1,10})?$")
_SUFFIX = re.compile(r"\.(dcm|dicom|dic|ima|png|jpe?g|tiff?|npy)$", re.IGNORECASE)  # kept on a marker
_LABEL_UNSAFE = re.compile(r"[\[\]~/\x00-\x1f\x7f]")
_MIN_CONTAINED = 3  # shorter identifying values only count when they are the whole component (or its stem)


_NOT_ALNUM = re.compile(r"[\W_]+")  # \w is str.isalnum() plus '_'


@lru_cache(maxsize=8192)  # the same names and header values recur over a dataset's files
def _normal(text: str) -> str:
    """``text`` case-folded, letters and digits only: how identifying values and names are compared."""
    return _NOT_ALNUM.sub("", text.casefold())


class IdentifyingValues:
    """The identifying values of one file, normalised for comparison (never stored, never printed)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        forms = {_normal(str(v)) for v in values if v is not None}
        forms.discard("")
        self._contained = tuple(sorted(f for f in forms if len(f) >= _MIN_CONTAINED))
        self._whole = frozenset(forms)

    def __bool__(self) -> bool:
        return bool(self._whole)

    def found_in(self, text: str) -> bool:
        """True when ``text`` (a path component, a view, a description) equals or contains a value."""
        if not self._whole:
            return False
        normal = _normal(text)
        stem = _normal(text.rsplit(".", 1)[0]) if "." in text else normal
        if normal in self._whole or stem in self._whole:
            return True
        return any(form in normal for form in self._contained)


def component_tag(secret: bytes, raw: bytes) -> str:
    """The keyed tag of one path component (its raw bytes): 12 hex characters of an HMAC under ``secret``."""
    return hmac.new(secret, _TAG_DOMAIN + raw, hashlib.sha256).hexdigest()[:_TAG_LENGTH]


def is_marker(component: str) -> bool:
    """True when ``component`` of a stored path is a marker (``[label~tag]suffix``), not a literal name."""
    return _MARKER.match(component) is not None


def _suffix(name: str) -> str:
    match = _SUFFIX.search(name)
    return match.group(0) if match and match.start() > 0 else ""


def _marker(label: str, tag: str, suffix: str) -> str:
    return f"[{_LABEL_UNSAFE.sub('_', label)}~{tag}]{suffix}"


def _stored_component(
    component: str, *, secret: bytes, identifying: IdentifyingValues, redacted: frozenset[str] | set[str]
) -> str:
    raw = os.fsencode(component)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    identifies = identifying.found_in(text if text is not None else raw.decode("utf-8", "replace"))
    literal = text is not None and not identifies and not _MARKER.match(text)
    if literal and not redacted:
        return text
    tag = component_tag(secret, raw)
    if literal and tag not in redacted:
        return text
    shown = text if text is not None else raw.decode("utf-8", "replace")
    suffix = _suffix(shown)
    if identifies or tag in redacted:
        return _marker(REDACTED_LABEL, tag, suffix)
    return _marker(shown[: len(shown) - len(suffix)], tag, suffix)


def stored_path(
    relative: str, *, secret: bytes, identifying: IdentifyingValues | None = None, redacted: Iterable[str] = ()
) -> str:
    """How the file at POSIX path ``relative`` (a ``str`` as ``os`` returns it, undecodable bytes as
    surrogates) is stored: valid UTF-8, no identifying value, resolvable by ``PathResolver``.

    ``identifying``: the file's identifying values. ``redacted``: component tags to redact as well
    (components redacted for another file of the dataset, so one folder is shown one way).
    """
    values = identifying if identifying is not None else IdentifyingValues()
    tags = redacted if isinstance(redacted, (set, frozenset)) else frozenset(redacted)
    return "/".join(
        _stored_component(part, secret=secret, identifying=values, redacted=tags) for part in relative.split("/")
    )


def redact_components(stored: str, *, secret: bytes, redacted: set[str] | frozenset[str]) -> str:
    """Stored path ``stored`` with each literal component whose tag is in ``redacted`` replaced by a
    ``redacted`` marker (markers are kept as they are)."""
    if not redacted:
        return stored
    parts = []
    for part in stored.split("/"):
        if not _MARKER.match(part):
            tag = component_tag(secret, part.encode("utf-8"))
            if tag in redacted:
                part = _marker(REDACTED_LABEL, tag, _suffix(part))
        parts.append(part)
    return "/".join(parts)


def redacted_tags(stored: str) -> set[str]:
    """The tags of the components of stored path ``stored`` that were redacted as identifying."""
    tags = set()
    for part in stored.split("/"):
        match = _MARKER.match(part)
        if match and match.group("label") == REDACTED_LABEL:
            tags.add(match.group("tag"))
    return tags


def check_relative(root: Path, path: str) -> tuple[str, ...]:
    """The components of stored path ``path``; ``InputError`` unless it is relative and stays under ``root``."""
    relative = PurePosixPath(str(path).replace(os.sep, "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise InputError(
            f"Path {str(path)!r} must be relative to the dataset root {root} and stay inside it "
            "(no leading '/', no '..')."
        )
    return relative.parts


class PathResolver:
    """Finds the file a stored path names under ``root``; markers are matched by their keyed tag.

    ``secret`` (a callable, so stores without markers never read their secret) gives the store secret.
    Folder listings are cached per resolver (listed again when a tag is not found).
    """

    def __init__(self, root: Path, secret: Callable[[], bytes]) -> None:
        self.root = Path(root)
        self._secret_of = secret
        self._secret: bytes | None = None
        self._listings: dict[bytes, dict[str, bytes]] = {}

    def _entries(self, folder: bytes, *, fresh: bool = False) -> dict[str, bytes]:
        entries = None if fresh else self._listings.get(folder)
        if entries is None:
            if self._secret is None:
                self._secret = self._secret_of()
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            entries = self._listings[folder] = {component_tag(self._secret, name): name for name in names}
        return entries

    def resolve(self, path: str) -> Path:
        """The file ``path`` (a stored path) names; ``InputError`` when a marked component no longer exists."""
        current = os.fsencode(self.root)
        for part in check_relative(self.root, path):
            match = _MARKER.match(part)
            if match is None:
                current = os.path.join(current, os.fsencode(part))
                continue
            tag = match.group("tag")
            name = self._entries(current).get(tag)
            if name is None:  # the folder may have changed since it was listed
                name = self._entries(current, fresh=True).get(tag)
            if name is None:
                raise InputError(
                    f"{path}: no file under the dataset root {self.root} matches this stored path any more (a folder "
                    "or file was renamed, moved or removed since ingest). Restore it, or ingest the dataset again."
                )
            current = os.path.join(current, name)
        return Path(os.fsdecode(current))
