"""Deterministic, realistic parameters and the float64 folding math.

Every module draws from its own generator seeded by (seed, module key); its BatchNorm running
statistics also follow from the statistics estimated upstream (moments.py). No main-branch layer
reads an aux one, so the converted model, which regenerates only the main layers, gets
bit-identical values whatever else the graph contains.
"""
from __future__ import annotations

import contextlib
import math
import zlib
from collections import OrderedDict

import numpy as np

from . import moments as M

BN_EPS = 1e-3          # YOLO sets eps=1e-3 on every BatchNorm2d (the ONNX default 1e-5 would be wrong)
BN_MOMENTUM = 0.97     # PyTorch momentum 0.03, written by exporters as 1 - 0.03


def rng(seed, key):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])


def conv_weight(g, c_out, c_in_per_group, k, gain=2.0):
    """Kaiming-uniform weight (PyTorch's own init family), variance gain / fan_in.

    Drawn as float32 uniforms in one vectorised call: ~4x cheaper than normals, which matters
    at yolov9-e's 70 M values."""
    fan_in = c_in_per_group * k * k
    w = g.random((c_out, c_in_per_group, k, k), dtype=np.float32)
    w -= np.float32(0.5)
    w *= np.float32(2.0 * math.sqrt(3.0 * gain / fan_in))
    return w


_reuse = None     # OrderedDict while a reuse() block is active


@contextlib.contextmanager
def reuse(max_bytes=1 << 30):
    """Within the block, a Conv module generated before (same seed, name, shape and input
    statistics) is not drawn again: building several forms of one model, or one model at several
    sizes, then costs little more than one build. Least recently used entries go beyond max_bytes."""
    global _reuse
    outer, _reuse = _reuse, OrderedDict()
    _reuse.max_bytes, _reuse.nbytes = max_bytes, 0
    try:
        yield
    finally:
        _reuse = outer


def conv_bn(seed, key, c_out, k, groups, x):
    if _reuse is None:
        return _conv_bn(seed, key, c_out, k, groups, x)
    ck = (seed, key, c_out, k, groups, x.tobytes())
    hit = _reuse.get(ck)
    if hit is None:
        hit = _conv_bn(seed, key, c_out, k, groups, x)
        hit[0].flags.writeable = False          # shared from now on
        _reuse[ck] = hit
        _reuse.nbytes += hit[0].nbytes
        while _reuse.nbytes > _reuse.max_bytes and len(_reuse) > 1:
            _reuse.nbytes -= _reuse.popitem(last=False)[1][0].nbytes
    else:
        _reuse.move_to_end(ck)
    return hit


def _conv_bn(seed, key, c_out, k, groups, x):
    """Parameters of one Conv module (Conv2d without bias + BatchNorm2d) whose input has the
    channel mean/var estimate `x` ([2, C_in], see moments.py).
    Returns (w, (gamma, beta, mean, var), estimate of the BN output).

    Output channels get weight scales spread over two decades, as trained nets have, so running
    variances span ~1e-4..1e1 (some close to eps: a fold with the wrong epsilon shows at once).
    Running statistics are the estimated batch statistics, off by a few per cent as an EMA is;
    gamma in 0.5..1.5 and beta ~ N(1, 0.5) keep BN far from identity."""
    g = rng(seed, key)
    w = conv_weight(g, c_out, x.shape[1] // groups, k)
    w *= np.exp(g.uniform(math.log(0.02), math.log(2.0), c_out)).astype(np.float32)[:, None, None, None]
    z = M.conv(x, w, groups)
    gamma = g.uniform(0.5, 1.5, c_out).astype(np.float32)
    # beta mostly positive: SiLU then works near its linear part. With beta centred on 0, half
    # the channels sit in SiLU's convex tail, which amplifies any error of the input statistics
    # by ~10 % per layer: through the neck the running variances ended up 1e6 x too small.
    beta = g.normal(1.0, 0.5, c_out).astype(np.float32)
    mean = (z[0] + g.normal(0.0, 0.05, c_out) * np.sqrt(z[1])).astype(np.float32)
    var = (z[1] * np.exp(g.normal(0.0, 0.05, c_out))).astype(np.float32)
    bn = (gamma, beta, mean, var)
    return w, bn, M.batchnorm(z, *bn, BN_EPS)


def conv_bias(seed, key, c_out, c_in_per_group, k, gain=1.0):
    """Parameters of a plain nn.Conv2d with bias (CBLinear, last convs of the head)."""
    g = rng(seed, key)
    w = conv_weight(g, c_out, c_in_per_group, k, gain)
    b = g.normal(0.0, 0.2, c_out).astype(np.float32)
    return w, b


def fold(w, bn):
    """Conv(W) -> BN  ==>  Conv(W * s, beta - mean * s), s = gamma / sqrt(var + eps). float64."""
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in bn)
    s = gamma / np.sqrt(var + BN_EPS)
    return np.multiply(w, s[:, None, None, None], dtype=np.float64), beta - mean * s


def fuse_repconv(w3, bn3, w1, bn1):
    """Conv3x3->BN + Conv1x1->BN  ==>  one 3x3 Conv: the 1x1 kernel sits at the centre tap. float64."""
    a, b = fold(w3, bn3)
    c, d = fold(w1, bn1)
    a[:, :, 1:2, 1:2] += c
    return a, b + d


def detect_bias_box(c):
    return np.ones(c, np.float32)


def detect_bias_cls(nc, stride):
    # DDetect.bias_init: log(5 / nc / (640 / s) ** 2), about 5 objects per 640 image
    return np.full(nc, math.log(5 / nc / (640 / stride) ** 2), np.float32)


def dfl_weight(reg_max=16, ndim=2):
    return np.arange(reg_max, dtype=np.float32).reshape((1, reg_max) + (1,) * ndim)
