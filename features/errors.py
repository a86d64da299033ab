"""The one error hierarchy of chronofeat.

Every error a user can meet is a ``ChronofeatError``; each also subclasses the built-in exception
whose meaning it shares, so ``except ValueError`` keeps working for callers that expect that.
A message names the input, says what failed and what to do. Messages never carry PHI: code that
raises about a DICOM file names its path relative to the dataset root, never its PatientID/Name.
"""

from __future__ import annotations

__all__ = [
    "ChronofeatError",
    "ParameterError",
    "InputError",
    "DecodeError",
    "StoreError",
    "TableNotFoundError",
    "AmbiguousNameError",
    "ConfigMismatchError",
    "DamagedPartError",
    "SecretMismatchError",
    "UnsafeLocationError",
    "ResourceLimitError",
    "ReadOnlyQueryError",
    "DatasetError",
    "WeightsError",
    "BackendUnavailableError",
    "EvaluationError",
    "check_param",
    "is_int",
]


class ChronofeatError(Exception):
    """Base of every error chronofeat raises on purpose."""


class ParameterError(ChronofeatError, ValueError):
    """A parameter of an extractor, model or command is outside what it accepts."""


class InputError(ChronofeatError, ValueError):
    """An input image, array, file or manifest is not what the operation needs."""


class DecodeError(InputError):
    """A file could not be decoded into pixels (unsupported codec, truncated data, ...)."""


class StoreError(ChronofeatError, OSError):
    """The feature store on disk is missing, locked, or not in the expected layout."""


class TableNotFoundError(StoreError, LookupError):
    """A table was asked for that the store does not hold."""


class AmbiguousNameError(ChronofeatError, LookupError):
    """A feature name fits several stored tables equally well; the message lists them to choose from."""


class ConfigMismatchError(StoreError):
    """Rows of a different configuration would be mixed into an existing table."""


class DamagedPartError(StoreError):
    """A Parquet part of a table cannot be read (truncated, junk, wrong schema); the message names it."""


class SecretMismatchError(StoreError):
    """The store's secret is missing or is not the one its tables were pseudonymised with."""


class UnsafeLocationError(ChronofeatError, PermissionError):
    """A store, output file or export target lies where writing would damage the store or the source tree."""


class ResourceLimitError(InputError):
    """An input would need more memory or time than the configured budget (e.g. a huge decoded frame)."""


class ReadOnlyQueryError(ChronofeatError, PermissionError):
    """A SQL statement would change or export data and ``--write`` was not given."""


class DatasetError(ChronofeatError, ValueError):
    """A dataset name, root folder or layout cannot be used."""


class WeightsError(ChronofeatError, RuntimeError):
    """Pretrained weights cannot be found, downloaded or loaded into the architecture."""


class BackendUnavailableError(ChronofeatError, RuntimeError):
    """A required library build or device is missing (nonfree OpenCV, CUDA, Ray, ...)."""


class EvaluationError(ChronofeatError, ValueError):
    """A model cannot be fitted or judged honestly on the data given (one class, too few subjects...)."""


def check_param(owner: str, name: str, value, *, kind: str, ok: bool) -> None:
    """Raise ``ParameterError`` in scikit-learn's wording when ``ok`` is false.

    ``owner`` is the class or command (``"SiftBoVW"``), ``name`` the parameter, ``kind`` what it must be
    (``"an int in [2, inf)"``). Example message:
    ``The 'n_words' parameter of SiftBoVW must be an int in [2, inf). Got 0 instead.``
    """
    if not ok:
        raise ParameterError(f"The {name!r} parameter of {owner} must be {kind}. Got {value!r} instead.")


def is_int(value, low: int | None = None) -> bool:
    """True for an int or NumPy integer (never a bool) that is ``>= low`` when ``low`` is given."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return low is None or value >= low
