"""Per-channel mean and variance of activations, propagated analytically through the blocks.

Why: a trained net's BatchNorm running statistics are its real batch statistics. Statistics drawn
at random do not match what the conv before them outputs; through ~100 layers the mismatch
compounds until activations reach 1e4, every sigmoid saturates, and a wrong fold hides in the
saturated outputs. So each Conv module's running mean/var are the estimated mean/var of its own
output, given the estimates of its input. An estimate is an array [2, C]: row 0 means, row 1
variances; Add is `+`, Concat/Split work on axis 1, as for tensors.

Model: channels and taps independent, a Gaussian at each SiLU (Gauss-Hermite quadrature), pool
factors measured in onnxruntime on the built graphs. On random images at 160 and 640 every BN of
every model then sees 0.4-1.7x its running variance and means within 1 std (tests/test_models.py
checks the outputs stay unsaturated). No BLAS, no spatial work: cheap, independent of imgsz, and
the same layer inputs give the same bits in every build containing the layer.
"""
from __future__ import annotations

import numpy as np

# Input images: uniform [0, 1) pixels (what the tests feed; real images are close).
IMAGE_MEAN, IMAGE_VAR = 0.5, 1.0 / 12.0

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()

AVGPOOL2_VAR = 0.45                          # 2x2 mean of spatially correlated values
MAXPOOL = {3: (1.0, 0.9), 5: (1.5, 0.4),     # k: (mean shift in input stds, variance factor)
           2: (0.8, 0.7), 9: (1.9, 0.3), 13: (2.2, 0.25)}   # YOLOv7's MP and SPPCSPC pools: estimated


def image(c=3):
    return np.stack([np.full(c, IMAGE_MEAN), np.full(c, IMAGE_VAR)])


def conv(x, w, groups=1, bias=None):
    """z = conv(x, w): E[z] = tap sums . E[x]; Var[z] = squared-tap sums . Var[x] (per group)."""
    c_out, cin_g = w.shape[:2]
    wt = w.reshape(c_out, cin_g, -1)
    # tap sums in float32 by einsum: no temporaries (float64 copies of yolov9-e's 70 M weights
    # cost seconds); einsum without optimize never calls BLAS, so the bits are reproducible
    ws = np.einsum("oik->oi", wt).astype(np.float64).reshape(groups, c_out // groups, cin_g)
    w2 = np.einsum("oik,oik->oi", wt, wt).astype(np.float64).reshape(groups, c_out // groups, cin_g)
    m = (ws * x[0].reshape(groups, 1, cin_g)).sum(-1).ravel()
    v = (w2 * x[1].reshape(groups, 1, cin_g)).sum(-1).ravel()
    return np.stack([m if bias is None else m + bias, v])


def batchnorm(z, gamma, beta, mean, var, eps):
    s = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return np.stack([s * (z[0] - mean) + beta, s * s * z[1]])


def _through(x, fn):
    """Mean and variance of fn(x) for x ~ N(mean, var), by quadrature."""
    t = x[0][:, None] + np.sqrt(x[1])[:, None] * _NODES[None, :]
    f = fn(t)
    m = (f * _WEIGHTS).sum(1)
    return np.stack([m, np.maximum((f * f * _WEIGHTS).sum(1) - m * m, 1e-12)])


def silu(x):
    """x * sigmoid(x)."""
    return _through(x, lambda t: t / (1.0 + np.exp(-t)))


def leaky(x, alpha):
    """LeakyReLU(alpha) (YOLOv7-tiny)."""
    return _through(x, lambda t: np.where(t > 0, t, alpha * t))


def avgpool2(x):
    return np.stack([x[0], x[1] * AVGPOOL2_VAR])


def maxpool(x, k):
    e, f = MAXPOOL[k]
    return np.stack([x[0] + e * np.sqrt(x[1]), x[1] * f])
