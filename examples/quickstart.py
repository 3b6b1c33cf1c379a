"""The README quickstart: train TFMOT's MNIST example model on the bundled
5,000-image MNIST subset and report its test accuracy. Runs offline on a CPU
in well under a minute."""

import keras  # Keras 3, TensorFlow's tf.keras: what models.build builds

import tfopt

keras.utils.set_random_seed(0)
train, val, test, info = tfopt.data.load("mnist5k", batch_size=64)
model = tfopt.models.build("tfmot_mnist", info.input_shape, info.num_classes)
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(train, validation_data=val, epochs=1, verbose=2)
_, accuracy = model.evaluate(test, verbose=0)
print(
    f"{info.name}: {info.train_size} training images, "
    f"{model.count_params():,} parameters, test accuracy {accuracy:.4f}"
)
