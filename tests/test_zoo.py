"""tf_keras.applications architectures through prune, QAT and int8 TFLite.

`pytest -m models` (`make test-models`) runs every family of
`scripts/zoo.py`, EfficientNetB0 on its own first (its blocks need most
of tfopt's own rewrites and configs: swish inside a conv, squeeze-excite,
image Rescaling and Normalization), and the agreement runs: about 35
minutes on 2 cores, too long for `make test`'s 10. EfficientNetB0 alone
(95 s here) left the `slow` lane for the same reason when the Keras 3 tests
came; test_quantization.py keeps each of its rewrites on a small block.
"""

import pytest

from scripts import zoo

# Integer end to end is out of reach for these, for the reason given.
FLOAT_ISLANDS = {
    # TFLite has no fused int8 layer norm: its MEAN / SQUARED_DIFFERENCE /
    # RSQRT decomposition would need a learned range for every intermediate.
    # (Rebuilding ConvNeXt once crashed: its LayerScale class lives in
    # tf_keras.applications, outside the registry.)
    "ConvNeXtTiny": "LayerNormalization",
}


def _check(row):
    assert row["prune"] == "ok" and row["strip"] == "ok", row
    assert row["quantize"] == "ok" and row["qat_fit"] == "ok", row
    assert row["export"] == "ok", row
    if row["model"] in FLOAT_ISLANDS:
        kinds = {name.split(" (")[1][:-1] for name in row["float_layers"]}
        assert kinds == {FLOAT_ISLANDS[row["model"]]}, row["float_layers"]
    else:
        assert row["float_layers"] == [], row["float_layers"]
        assert zoo.integer(row), (
            row["quantize_ops"],
            row["dequantize_ops"],
            row["float_ops"],
        )
        # Not even an int8 rescale: one QUANTIZE, at the input.
        assert row["quantize_ops"] == 1, row["requantize_ops"]


@pytest.mark.models
def test_efficientnet_is_integer_end_to_end(tmp_path):
    _check(zoo.measure("EfficientNetB0", 32, raw=False, directory=tmp_path))


@pytest.mark.models
@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_every_family(name, tmp_path):
    _check(zoo.measure(name, zoo.MODELS[name], raw=False, directory=tmp_path))


@pytest.mark.models
@pytest.mark.parametrize("name", sorted(zoo.AGREEMENT))
def test_int8_file_agrees_with_the_qat_model_when_trained(name, tmp_path):
    # Trained for 4 epochs (EfficientNetB0 10) on mnist5k as 32x32 RGB
    # (75x75 for InceptionV3): the int8 file's test accuracy is within half
    # a point of the QAT model's on 1,000 images.
    size, kwargs, epochs = zoo.AGREEMENT[name]
    row = zoo.agreement(name, size, epochs, directory=tmp_path, **kwargs)
    assert row["float_ops"] == 0 and row["quantize_ops"] == 1, row
    assert row["qat_accuracy"] > 0.5, row  # it learned something
    assert abs(row["difference"]) <= 0.005, row


# keras.applications (Keras 3) lacks these tf_keras families.
KERAS3_MISSING = {"RegNetX002", "RegNetY002", "ResNetRS50"}


@pytest.mark.models
@pytest.mark.parametrize("name", sorted(set(zoo.MODELS) - KERAS3_MISSING))
def test_every_keras3_family(name, tmp_path):
    _check(zoo.measure(name, zoo.MODELS[name], directory=tmp_path, version=3))


@pytest.mark.models
@pytest.mark.parametrize("name", sorted(zoo.AGREEMENT))
def test_keras3_int8_file_agrees_with_the_qat_model_when_trained(name, tmp_path):
    size, kwargs, epochs = zoo.AGREEMENT[name]
    row = zoo.agreement(name, size, epochs, directory=tmp_path, version=3, **kwargs)
    assert row["float_ops"] == 0 and row["quantize_ops"] == 1, row
    assert row["qat_accuracy"] > 0.5, row
    assert abs(row["difference"]) <= 0.005, row


def test_keras3_lacks_only_the_families_named():
    from tfopt import models
    from tfopt.core.kerases import Keras

    applications = models.keras_module(Keras.KERAS3).applications
    assert {n for n in zoo.MODELS if not hasattr(applications, n)} == KERAS3_MISSING


def test_table_rows():
    row = {
        "model": "M",
        "input": 32,
        "raw_prune": "ok",
        "raw_qat": "ValueError: x",
        "prune": "ok",
        "strip": "ok",
        "quantize": "ok",
        "export": "ok",
        "float_layers": [],
        "quantize_ops": 3,
        "dequantize_ops": 1,
        "requantize_ops": 2,
        "float_ops": [],
        "ops": 40,
    }
    assert zoo.integer(row)
    assert zoo.markdown([row]).splitlines()[-1] == (
        "| M | 32 | ok | fails | ok | ok | 0 | 3 / 1 | 2 | 0 / 40 |"
    )
    assert not zoo.integer({**row, "float_ops": ["LOGISTIC (x)"]})
    assert not zoo.integer({**row, "quantize_ops": 17})
    assert not zoo.integer({**row, "dequantize_ops": 2})
