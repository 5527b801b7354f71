"""``xrayfeat export --format savedmodel``: a TensorFlow SavedModel that serves the run's probabilities.

Checked in a fresh process that imports only TensorFlow and numpy, on the session's shared run
(the inputs tests/test_export.py prepares). Split from tests/test_export.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_export import ATOL, SIZE, _child, _export, export_inputs
from xrayfeat.runs.export import read_export

# Runs in a fresh interpreter: TensorFlow and numpy only. argv: folder, pixels.npy, out.npy.
SAVEDMODEL_CHILD = """
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
np.save(sys.argv[3], loaded.serve(tf.constant(np.load(sys.argv[2])))["probabilities"].numpy())
signature = loaded.signatures["serving_default"]
print(json.dumps({
    "inputs": {k: [str(v.dtype.name), v.shape.as_list()] for k, v in signature.structured_input_signature[1].items()},
    "outputs": sorted(signature.structured_outputs),
    "xrayfeat_imported": sorted(m for m in sys.modules if m.startswith("xrayfeat")),
}))
"""


@pytest.fixture(scope="module")
def tiny_run(shared_run, tmp_path_factory):
    return export_inputs(shared_run, tmp_path_factory.mktemp("export-savedmodel"))


@pytest.mark.slow
@pytest.mark.heavy  # costly end to end: .ci/run runs it, ./scripts/test.sh leaves it out
def test_savedmodel_export_serves_the_same_probabilities(tiny_run):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"--format savedmodel needs the TensorFlow backend; this run uses {keras.backend.backend()}")
    run, root = tiny_run["run"], tiny_run["root"]
    out = root / "deploy-sm"
    result = _export(run, out, "--format", "savedmodel")
    folder = out / "savedmodel"
    assert result["model"] == str(folder) and (folder / "saved_model.pb").is_file()
    info = json.loads((out / "export.json").read_text())
    assert read_export(out) == info  # what export_run writes is what its schema holds
    assert info["format"] == "savedmodel" and "savedmodel/saved_model.pb" in info["sha256"]

    probs = root / "probs-savedmodel.npy"
    seen = _child(SAVEDMODEL_CHILD, folder, tiny_run["pixels"], probs)
    assert seen["xrayfeat_imported"] == []
    assert seen["inputs"] == {"pixels": ["uint8", [None, SIZE, SIZE, 3]]}
    assert seen["outputs"] == ["probabilities"]
    np.testing.assert_allclose(np.load(probs), tiny_run["expected"], rtol=0, atol=ATOL)
    # every weight stored once (model.export would store each twice: keras-team/keras#23553)
    assert result["bytes"] <= 4 * result["params"] * 1.01 + 1_000_000, (result["bytes"], result["params"])
