"""The README's Keras 3 example: a Keras 3 student pruned to 80% while it is
distilled from a Keras 3 teacher, stripped and exported to an int8 TFLite
file, on the bundled MNIST subset. tf_keras and TFMOT are never loaded.
Writes its file to a temporary directory; runs offline on a CPU in about a
minute."""

import os
import sys
import tempfile

import keras

import tfopt

keras.utils.set_random_seed(0)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
train, val, test, info = tfopt.data.load("mnist5k", batch_size=64)
teacher = tfopt.models.build("teacher_cnn", info.input_shape, 10, keras_version=3)
teacher.compile("adam", loss, metrics=["accuracy"])
teacher.fit(train, epochs=3, verbose=0)
student = tfopt.prune(
    tfopt.models.build("student_cnn", info.input_shape, 10, keras_version=3), 0.8
)
distiller = tfopt.Distiller(student=student, teacher=teacher)
distiller.compile("adam", loss, metrics=["accuracy"])
distiller.fit(train, epochs=5, verbose=0, callbacks=[tfopt.PruningCallback()])
small = tfopt.strip(student)
path = os.path.join(tempfile.mkdtemp(), "student_int8.tflite")
tfopt.export_tflite(small, path, quantization="int8", representative_data=train)
int8 = tfopt.evaluate_tflite(path, test).accuracy
loaded = sorted(
    m for m in ("tf_keras", "tensorflow_model_optimization") if m in sys.modules
)
print(
    f"sparsity {tfopt.sparsity_report(small).sparsity:.2f}, int8 test accuracy "
    f"{int8:.4f}, tf_keras/TFMOT loaded: {loaded or 'none'}"
)
