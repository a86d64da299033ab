"""Rigid (or affine) registration of one volume onto another, with SimpleITK (pure: arrays in, arrays out).

A longitudinal 3-D pair is a subject's reference time point (``fixed``) and a later one (``moving``).
``register_volume`` moves the later volume onto the reference: it estimates the transform that maps a
point of the fixed grid to the moving volume, resamples the moving volume on the fixed grid (linear
interpolation) and records how well that worked (the final metric value, the optimizer's iterations).
``difference_volume`` then gives ``moving - fixed`` on the fixed grid, only where both volumes hold data.

Conventions (the project's array order throughout): arrays are ``(z, y, x)``, spacings ``(z, y, x)`` in mm,
each volume's voxel ``(0, 0, 0)`` lies at the physical origin. A transform is a 4x4 matrix ``M`` in
``(z, y, x)`` mm mapping a fixed-grid point ``p`` to the moving-volume point ``M @ [p, 1]``; its
``rotation_deg`` are the Euler angles about the z, y and x axes (ITK's ``Euler3DTransform`` convention,
``R = Rz @ Rx @ Ry`` written in x, y, z order) and its ``shift_mm`` the displacement ``M(c) - c`` of the
fixed grid's centre ``c``. Registration starts from the two grids' centres laid on each other.

The search is multi-resolution (``shrink`` factors with Gaussian ``smoothing`` in mm per level), reads
``samples / shrink`` voxels per level (every voxel of a small volume), drawn at random with a fixed
``seed``, and runs the metric single-threaded by default,
so a result is reproducible bit for bit; an iteration costs the same at any volume size, so a 256^3
pair takes seconds (``bench/register3d.py``), and no gradient volume is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.errors import InputError, check_param, is_int

__all__ = [
    "TRANSFORMS",
    "METRICS",
    "VolumeTransform",
    "VolumeRegistration",
    "register_volume",
    "register_rigid",
    "difference_volume",
    "euler_angles_deg",
    "rigid_matrix",
    "motion_error",
    "grid_centre",
    "identity_metric",
]

TRANSFORMS = ("rigid", "affine")
_RESAMPLE_VOXELS = 2_000_000  # voxels per resampled slab
METRICS = ("correlation", "mattes")


@dataclass(frozen=True)
class VolumeTransform:
    """A transform from the fixed grid to the moving volume, in ``(z, y, x)`` mm (see the module docstring).

    ``kind``: 'rigid' or 'affine'; ``matrix``: 4x4 float64; ``rotation_deg``: Euler angles about z, y, x
    (of the matrix's nearest rotation when affine); ``shift_mm``: displacement of the fixed grid's centre.
    """

    kind: str
    matrix: np.ndarray
    rotation_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]

    @property
    def angle_deg(self) -> float:
        """The total rotation angle (of the nearest rotation), in degrees."""
        return _rotation_angle(_nearest_rotation(self.matrix[:3, :3]))

    def as_row(self) -> np.ndarray:
        """The top three rows of ``matrix`` as 12 float32 numbers (a ``FLOAT[12]`` column)."""
        return self.matrix[:3, :].astype(np.float32).reshape(12)


@dataclass(frozen=True)
class VolumeRegistration:
    """The moving volume on the fixed grid, and how it got there.

    ``resampled``: float32 array of the fixed volume's shape; ``mask``: True where the moving volume
    covers the fixed voxel (outside it ``resampled`` is 0); ``transform``: ``VolumeTransform``;
    ``metric``: the final metric value (lower is better: -1 is a perfect correlation, Mattes mutual
    information is negative too); ``metric_name``; ``iterations``: optimizer iterations over all levels.
    """

    resampled: np.ndarray
    mask: np.ndarray
    transform: VolumeTransform
    metric: float
    metric_name: str
    iterations: int


def _check_volume(array: np.ndarray, spacing: Sequence[float], what: str) -> tuple[np.ndarray, tuple]:
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 4:
        raise InputError(
            f"The {what} volume has shape {array.shape}; a (z, y, x) array of at least 4 voxels a side is needed."
        )
    if np.iscomplexobj(array) or array.dtype == bool or array.dtype.kind not in "uif":
        raise InputError(f"The {what} volume has dtype {array.dtype}; a real-valued (z, y, x) array is needed.")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"The {what} spacing is {spacing}; three positive (z, y, x) voxel sizes in mm are needed.")
    return array, spacing


def _check_options(transform: str, metric: str, shrink, smoothing, samples: int, iterations: int) -> None:
    check_param("register_volume", "transform", transform, kind=f"a str among {list(TRANSFORMS)}",
                ok=transform in TRANSFORMS)
    check_param("register_volume", "metric", metric, kind=f"a str among {list(METRICS)}", ok=metric in METRICS)
    shrink_ok = isinstance(shrink, (tuple, list)) and len(shrink) > 0 and all(is_int(s, 1) for s in shrink)
    check_param("register_volume", "shrink", shrink, kind="a non-empty tuple of ints >= 1", ok=shrink_ok)
    smooth_ok = (isinstance(smoothing, (tuple, list)) and len(smoothing) == len(shrink)
                 and all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in smoothing))
    check_param("register_volume", "smoothing", smoothing,
                kind=f"a tuple of {len(shrink)} non-negative numbers (one per shrink level)", ok=smooth_ok)
    check_param("register_volume", "samples", samples, kind="an int in [100, inf)", ok=is_int(samples, 100))
    check_param("register_volume", "iterations", iterations, kind="an int in [1, 10000]",
                ok=is_int(iterations, 1) and iterations <= 10000)


def _to_image(array: np.ndarray, spacing: tuple):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing[::-1])
    return image


def grid_centre(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The physical ``(z, y, x)`` mm centre of a grid of ``shape`` voxels of ``spacing`` (voxel 0 at 0)."""
    return (np.asarray(shape, np.float64) - 1.0) / 2.0 * np.asarray(spacing, np.float64)


def _registration_method(metric: str, shrink, smoothing, samples: int, iterations: int, seed: int, shape: tuple):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    if metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    # ``samples / shrink`` voxels per level: the cost of an iteration does not grow with the volume. A volume
    # small enough is read whole at every level (ITK's random sampling draws with replacement: it would not).
    # SimpleITK reads seed 0 as "seed from the wall clock": ours is shifted by one.
    levels = [(float(np.prod([max(1, n // int(s)) for n in shape])), samples / int(s)) for s in shrink]
    if all(want >= n for n, want in levels):
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentagePerLevel([min(1.0, want / n) for n, want in levels], int(seed) + 1)
    # Gradients at the sampled points only (no whole-volume gradient images: 3 more volumes in memory).
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([int(s) for s in shrink])
    method.SetSmoothingSigmasPerLevel([float(s) for s in smoothing])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _itk_to_zyx(transform) -> np.ndarray:
    """4x4 ``(z, y, x)`` matrix of an ITK matrix-offset transform (which works in ``(x, y, z)``)."""
    a_xyz = np.asarray(transform.GetMatrix(), np.float64).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), np.float64)
    translation = np.asarray(transform.GetTranslation(), np.float64)
    offset_xyz = translation + centre - a_xyz @ centre
    matrix = np.eye(4)
    matrix[:3, :3] = a_xyz[::-1, ::-1]
    matrix[:3, 3] = offset_xyz[::-1]
    return matrix


def _nearest_rotation(a: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(a)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def _rotation_angle(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def euler_angles_deg(matrix: np.ndarray) -> tuple[float, float, float]:
    """Euler angles ``(about z, about y, about x)`` in degrees of a ``(z, y, x)`` 3x3 (or 4x4) matrix.

    ITK's ``Euler3DTransform`` convention: in ``(x, y, z)`` order the rotation is ``Rz @ Rx @ Ry``.
    A non-orthogonal (affine) matrix is first replaced by its nearest rotation.
    """
    r_xyz = _nearest_rotation(np.asarray(matrix, np.float64)[:3, :3])[::-1, ::-1]
    angle_x = np.arcsin(np.clip(r_xyz[2, 1], -1.0, 1.0))
    cos_x = np.cos(angle_x)
    if abs(cos_x) > 1e-9:
        angle_y = np.arctan2(-r_xyz[2, 0] / cos_x, r_xyz[2, 2] / cos_x)
        angle_z = np.arctan2(-r_xyz[0, 1] / cos_x, r_xyz[1, 1] / cos_x)
    else:  # gimbal lock: only angle_z + angle_y is defined
        angle_y = 0.0
        angle_z = np.arctan2(r_xyz[1, 0], r_xyz[0, 0])
    return float(np.degrees(angle_z)), float(np.degrees(angle_y)), float(np.degrees(angle_x))


def rigid_matrix(rotation_deg: Sequence[float], shift_mm: Sequence[float], centre_mm: Sequence[float]) -> np.ndarray:
    """The 4x4 ``(z, y, x)`` matrix of a rotation (Euler angles about z, y, x in degrees, ITK convention)
    about ``centre_mm`` followed by ``shift_mm``: the inverse of ``euler_angles_deg`` plus the shift."""
    az, ay, ax = np.radians(np.asarray(rotation_deg, np.float64))
    cz, sz, cy, sy, cx, sx = np.cos(az), np.sin(az), np.cos(ay), np.sin(ay), np.cos(ax), np.sin(ax)
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_zyx = (rot_z @ rot_x @ rot_y)[::-1, ::-1]
    centre = np.asarray(centre_mm, np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = r_zyx
    matrix[:3, 3] = centre + np.asarray(shift_mm, np.float64) - r_zyx @ centre
    return matrix


def _volume_transform(kind: str, matrix: np.ndarray, centre: np.ndarray) -> VolumeTransform:
    shift = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
    return VolumeTransform(kind=kind, matrix=matrix, rotation_deg=euler_angles_deg(matrix),
                           shift_mm=tuple(float(v) for v in shift))


def motion_error(
    estimated: np.ndarray, truth: np.ndarray, *, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[float, float]:
    """How far ``estimated`` is from ``truth`` (two 4x4 ``(z, y, x)`` matrices on a fixed grid of ``shape``
    and ``spacing``): ``(voxels, degrees)`` — the distance between where they send the grid's centre, in
    voxels (each axis's mm divided by its spacing), and the angle of the rotation between them."""
    estimated, truth = np.asarray(estimated, np.float64), np.asarray(truth, np.float64)
    centre = np.append(grid_centre(shape, spacing), 1.0)
    gap_voxels = (estimated @ centre - truth @ centre)[:3] / np.asarray(spacing, np.float64)
    between = _nearest_rotation(estimated[:3, :3]) @ _nearest_rotation(truth[:3, :3]).T
    return float(np.linalg.norm(gap_voxels)), _rotation_angle(between)


def _initial_transform(fixed, moving, kind: str):
    """Rotation about the fixed grid's centre, translated so that the two grids' centres coincide."""
    import SimpleITK as sitk

    start = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    return sitk.CenteredTransformInitializer(fixed, moving, start, sitk.CenteredTransformInitializerFilter.GEOMETRY)


def _resample(moving, shape: tuple, spacing: tuple, transform) -> tuple[np.ndarray, np.ndarray]:
    """The moving image on the fixed grid of ``shape`` and ``spacing`` (float32, 0 outside it) and where it
    covers the grid (bool). Resampled slab by slab along z, so no second full-size output exists at once."""
    import SimpleITK as sitk

    values = np.empty(shape, np.float32)
    mask = np.empty(shape, bool)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    step = max(1, _RESAMPLE_VOXELS // (shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        size = (shape[2], shape[1], z1 - z0)
        origin = (0.0, 0.0, z0 * spacing[0])
        grid = {"size": size, "outputOrigin": origin, "outputSpacing": spacing[::-1],
                "outputDirection": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "transform": transform}
        slab = sitk.Resample(moving, interpolator=sitk.sitkLinear, defaultPixelValue=0.0,
                             outputPixelType=sitk.sitkFloat32, **grid)
        values[z0:z1] = sitk.GetArrayViewFromImage(slab)
        covered = sitk.Resample(ones, interpolator=sitk.sitkNearestNeighbor, defaultPixelValue=0,
                                outputPixelType=sitk.sitkUInt8, **grid)
        mask[z0:z1] = sitk.GetArrayViewFromImage(covered) > 0
    values[~mask] = 0.0
    return values, mask


def register_volume(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    spacing_fixed: Sequence[float],
    spacing_moving: Sequence[float] | None = None,
    transform: str = "rigid",
    metric: str = "correlation",
    shrink: Sequence[int] = (4, 2, 1),
    smoothing: Sequence[float] = (2.0, 1.0, 0.5),
    samples: int = 100_000,
    iterations: int = 200,
    seed: int = 0,
    threads: int = 1,
) -> VolumeRegistration:
    """Register ``moving`` onto ``fixed`` and resample it on the fixed grid (see the module docstring).

    ``fixed`` and ``moving``: real ``(z, y, x)`` arrays (any shapes); ``spacing_*``: their voxel sizes in mm
    (``spacing_moving`` defaults to ``spacing_fixed``); ``transform``: 'rigid' (rotation + translation) or
    'affine'; ``metric``: 'correlation' (same modality, the default) or 'mattes' (mutual information);
    ``shrink`` / ``smoothing``: the pyramid; ``samples``: voxels the metric reads at full resolution (at
    random; ``samples / shrink`` on a level shrunk by ``shrink``; all voxels of a level that has fewer);
    ``iterations``: at most, per level; ``seed``: of the sampling; ``threads``: ITK threads (1 keeps results
    identical from run to run). Returns a ``VolumeRegistration``.
    """
    import SimpleITK as sitk

    fixed, spacing_fixed = _check_volume(fixed, spacing_fixed, "fixed")
    moving, spacing_moving = _check_volume(moving, spacing_fixed if spacing_moving is None else spacing_moving,
                                           "moving")
    _check_options(transform, metric, shrink, smoothing, samples, iterations)
    check_param("register_volume", "threads", threads, kind="an int in [1, inf)", ok=is_int(threads, 1))
    fixed_image, moving_image = _to_image(fixed, spacing_fixed), _to_image(moving, spacing_moving)
    method = _registration_method(metric, shrink, smoothing, samples, iterations, seed, fixed.shape)
    method.SetNumberOfThreads(int(threads))
    method.SetInitialTransform(_initial_transform(fixed_image, moving_image, transform), inPlace=True)
    steps = [0]
    method.AddCommand(sitk.sitkIterationEvent, lambda: steps.__setitem__(0, steps[0] + 1))
    try:
        found = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        raise InputError(
            f"SimpleITK could not register the moving volume {moving.shape} onto the fixed one {fixed.shape}: "
            f"{str(exc).strip().splitlines()[-1]}. Check that both show the same anatomy, or lower 'shrink'."
        ) from exc
    found = found.GetNthTransform(0) if isinstance(found, sitk.CompositeTransform) else found
    if not hasattr(found, "GetMatrix"):
        found = (sitk.Euler3DTransform if transform == "rigid" else sitk.AffineTransform)(found)
    matrix = _itk_to_zyx(found)
    metric_value, iterations_done = float(method.GetMetricValue()), int(steps[0])
    del method, fixed_image  # only the fixed grid is needed from here on
    resampled, mask = _resample(moving_image, fixed.shape, spacing_fixed, found)
    return VolumeRegistration(
        resampled=resampled, mask=mask,
        transform=_volume_transform(transform, matrix, grid_centre(fixed.shape, spacing_fixed)),
        metric=metric_value, metric_name=metric, iterations=iterations_done,
    )


def identity_metric(
    fixed: np.ndarray, moving: np.ndarray, *, spacing: Sequence[float], metric: str = "correlation",
    samples: int = 100_000, seed: int = 0,
) -> float:
    """The ``metric`` value of two volumes on one grid as they lie (no registration), sampled as
    ``register_volume`` samples: e.g. -1 for a volume against itself with 'correlation'."""
    import SimpleITK as sitk

    fixed, spacing = _check_volume(fixed, spacing, "fixed")
    moving, _ = _check_volume(moving, spacing, "moving")
    _check_options("rigid", metric, (1,), (0.0,), samples, 1)
    method = _registration_method(metric, (1,), (0.0,), samples, 1, seed, fixed.shape)
    method.SetNumberOfThreads(1)
    method.SetInitialTransform(sitk.Euler3DTransform())
    return float(method.MetricEvaluate(_to_image(fixed, spacing), _to_image(moving, spacing)))


def register_rigid(fixed: np.ndarray, moving: np.ndarray, **options) -> VolumeRegistration:
    """``register_volume`` with ``transform='rigid'`` unless ``options`` says 'affine' (same keywords)."""
    options.setdefault("transform", "rigid")
    return register_volume(fixed, moving, **options)


def difference_volume(
    registration: VolumeRegistration, fixed: np.ndarray, *, absolute: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(difference, mask)``: ``resampled moving - fixed`` (or its absolute value) as float32, 0 where the
    moving volume does not cover the fixed voxel, and that coverage mask (the 3-D ``overlap_only``)."""
    fixed = np.asarray(fixed)
    if fixed.shape != registration.resampled.shape:
        raise InputError(
            f"The fixed volume has shape {fixed.shape} but the registration resampled onto "
            f"{registration.resampled.shape}; pass the fixed volume that was registered."
        )
    diff = registration.resampled - fixed.astype(np.float32, copy=False)
    if absolute:
        np.abs(diff, out=diff)
    diff[~registration.mask] = 0.0
    return diff, registration.mask
