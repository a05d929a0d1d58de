"""onnxrep reaches into a few private onnx-graphsurgeon/onnx APIs (onnxrep/ir/private_api.py). If an upgrade
removes or renames one, this fails first, naming it, instead of a pass failing obscurely."""

import onnx_graphsurgeon as gs

from onnxrep.ir import private_api


def test_every_private_api_we_use_is_there():
    assert private_api.check() == []


def test_graphsurgeon_version_is_one_we_tested():
    assert ".".join(gs.__version__.split(".")[:2]) in private_api.TESTED_GS, gs.__version__


def test_write_initializer_releases_the_numpy_copy():
    import numpy as np
    import onnx

    c = gs.Constant("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    g = onnx.GraphProto()
    private_api.write_initializer(g, c)
    assert g.initializer[0].name == "w" and list(g.initializer[0].dims) == [2, 3]
    np.testing.assert_array_equal(private_api.peek(c), np.arange(6, dtype=np.float32).reshape(2, 3))
