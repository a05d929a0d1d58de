"""Op tables, each written once: which ops keep a shape, broadcast, keep the batch, never fold.

Every pass and analysis that asks "does this op copy its input's shape?" reads these sets.
"""

from __future__ import annotations

# Output 0 has exactly the shape of input 0.
SAME_SHAPE = frozenset({
    "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Erf", "Softmax", "LogSoftmax",
    "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Clip", "Cast", "CastLike", "Identity", "Floor",
    "Ceil", "Round", "Sign", "Not", "Dropout", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "Mish", "Softplus", "Softsign", "Gelu", "ThresholdedRelu", "IsNaN", "IsInf", "Sin", "Cos", "LpNormalization",
    "LRN", "Shrink", "Hardmax", "PRelu"})
# Elementwise with numpy broadcasting: the output has the rank of the widest input.
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
                       "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift"})
# The output keeps the batch (axis 0) of input 0.
KEEP_BATCH = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                        "LpPool", "GlobalLpPool", "DepthToSpace", "SpaceToDepth"})
# Ops with weights: their parameters are what "parameters" and MACs count.
LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Their value depends on shapes only: metadata, not computation.
SHAPE_READS = ("Shape", "Size")
# Random ops differ run to run; quantization boundaries are the point of a QDQ model: never "constant".
RANDOM = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli"})
NEVER_FOLD = RANDOM | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
