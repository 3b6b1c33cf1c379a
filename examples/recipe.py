"""The README's recipe for compressing a trained model in user code: 80% of
the weights pruned, then sparsity-preserving QAT to an int8 file, with the
settings measured best for a short pruning run (BUILD_NOTES, "Accuracy at
an equal training budget"). `scripts/benchmark.py --suite=recipe` runs `compress`
against `tfmot_tutorial`, TFMOT's own tutorial recipe through the same
calls, from the same trained model for the same epochs.

    .venv/bin/python examples/recipe.py   # trains, compresses, prints both
"""

import keras  # Keras 3; for tf_keras models: `from tfopt import keras`

import tfopt


def _compiled(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _cosine(peak, epochs, train):
    """Adam's rate from `peak` down to 0 at the last step of `epochs`."""
    batches = int(train.cardinality())
    if batches < 1:  # repeated or filtered: give the steps per epoch instead
        raise ValueError(f"`train` has no known length ({batches}).")
    return keras.optimizers.schedules.CosineDecay(peak, decay_steps=epochs * batches)


def _prune_then_qat(pruned, qat_rate, train, validation, epochs):
    """Fits `pruned` (compiled) for `epochs`, then one epoch of QAT."""
    pruned.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        callbacks=[tfopt.PruningCallback()],
        verbose=0,
    )
    qat = tfopt.quantize(tfopt.strip(pruned), preserve_sparsity=True)
    _compiled(qat, qat_rate)
    qat.fit(train, validation_data=validation, epochs=1, verbose=0)
    return qat


def compress(model, train, validation=None, *, epochs=2, sparsity=0.8):
    """The recommended recipe: `model` (trained) pruned to `sparsity` over
    the first half of `epochs` and fine-tuned at full sparsity for the
    rest, Adam's rate decaying from 1e-2 to 0 (a cosine); then one epoch of
    QAT decaying from 6e-4. Returns the QAT model, for `tfopt.export_tflite`."""
    pruned = tfopt.prune(model, sparsity, end=0.5)
    _compiled(pruned, _cosine(1e-2, epochs, train))
    return _prune_then_qat(pruned, _cosine(6e-4, 1, train), train, validation, epochs)


def tfmot_tutorial(model, train, validation=None, *, epochs=2, sparsity=0.8):
    """TFMOT's tutorial recipe ("Pruning in Keras", then "Pruning preserving
    quantization aware training"): sparsity from 50% to `sparsity` over all
    of `epochs` at Adam's default 1e-3, then one epoch of QAT at 1e-3."""
    pruned = tfopt.prune(model, sparsity, initial_sparsity=0.5, begin=0.0, end=1.0)
    _compiled(pruned, 1e-3)
    return _prune_then_qat(pruned, 1e-3, train, validation, epochs)


if __name__ == "__main__":
    import tempfile

    keras.utils.set_random_seed(0)
    train, validation, test, info = tfopt.data.load("mnist5k", batch_size=64)
    model = _compiled(
        tfopt.models.build("tfmot_mnist", info.input_shape, info.num_classes), 1e-3
    )
    model.fit(train, validation_data=validation, epochs=4, verbose=0)
    folder = tempfile.mkdtemp()
    for name, recipe in (("tfopt", compress), ("TFMOT tutorial", tfmot_tutorial)):
        path = f"{folder}/{name.split()[0]}.tflite"
        tfopt.export_tflite(recipe(model, train, validation), path, quantization="int8")
        accuracy = tfopt.evaluate_tflite(path, test).accuracy
        print(f"{name}: int8 accuracy {accuracy:.4f}")
