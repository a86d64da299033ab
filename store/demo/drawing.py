"""Small drawing helpers the synthetic demos share: soft masks and texture sampling."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["soft", "sample"]


def soft(distance: np.ndarray, width: float = 0.6) -> np.ndarray:
    """Anti-aliased inside-mask in [0, 1] from a signed ``distance`` (positive inside), edge ``width`` pixels."""
    return 0.5 * (1.0 + np.tanh(distance / (2.0 * width)))


def sample(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of ``texture`` at (x, y) measured from its centre (reflected at the borders)."""
    cy, cx = texture.shape[0] / 2.0, texture.shape[1] / 2.0
    map_x = np.asarray(x + cx, dtype=np.float32)
    map_y = np.asarray(y + cy, dtype=np.float32)
    return cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
