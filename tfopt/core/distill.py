"""What the two Distillers share (`keras2.distillation.Distiller` for tf_keras,
`keras3.distillation.Distiller` for Keras 3): the soft losses, the argument
checks, the teacher and student passes with teacher caching and feature
taps and the per-example loss. All of it
is TensorFlow ops and Python, so it runs in either Keras on the TensorFlow
backend; nothing here imports a Keras.
"""

import tensorflow as tf

from tfopt.core import checks, vocab


def _kl(teacher, student, temperature):
    soft_teacher = tf.nn.softmax(teacher / temperature)
    log_student = tf.nn.log_softmax(student / temperature)
    log_teacher = tf.nn.log_softmax(teacher / temperature)
    return tf.reduce_sum(soft_teacher * (log_teacher - log_student), axis=-1)


def _mse(teacher, student, temperature):
    del temperature  # logit matching needs no softening
    return tf.reduce_mean(tf.square(teacher - student), axis=-1)


# The per-example soft losses under their `vocab.DISTILLATION_LOSSES` names:
# KL(softmax(t/T) || softmax(s/T)), or MSE on logits.
SOFT_LOSSES = {"kl": _kl, "mse": _mse}


def ends_in_softmax(model):
    """Whether `model` outputs probabilities (its last layer is a softmax, as
    `keras.applications` classifiers are by default) rather than logits."""
    layer = model.layers[-1] if model.layers else None
    if type(layer).__name__ == "Softmax":
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def check_keywords(args):
    """Refuses positional models: Keras 3's `keras.distillation.Distiller`
    takes the teacher first, so a positional order would be read both ways."""
    if args:
        raise TypeError(
            "Distiller takes its models as keywords: Distiller(student=..., "
            f"teacher=...). Received: {len(args)} positional argument(s)"
        )


def check_output_shapes(student_shape, teacher_shape):
    if tuple(student_shape) != tuple(teacher_shape):
        raise ValueError(
            "`student` and `teacher` must produce the same output shape. "
            f"Received: student output {student_shape}, teacher output "
            f"{teacher_shape}"
        )


def check_hard_loss(loss):
    if loss is None:
        raise ValueError(
            "`loss` must be the student's hard-label loss, e.g. "
            "keras.losses.SparseCategoricalCrossentropy(from_logits=True). "
            "Received: loss=None"
        )


def check_temperature(value, arg="temperature"):
    checks.check_real(value, arg)
    if not value > 0:
        raise ValueError(f"`{arg}` must be > 0. Received: {arg}={value!r}")


def check_alpha(value, arg="alpha"):
    checks.check_real(value, arg)
    if not 0 <= value <= 1:
        raise ValueError(f"`{arg}` must be in [0, 1]. Received: {arg}={value!r}")


def _find_layer(model, name, role):
    layers = [
        layer
        for layer in model.layers
        if name in (layer.name, getattr(getattr(layer, "layer", None), "name", None))
    ]
    if not layers:
        raise ValueError(
            f"`features` names {name!r}, which is not a layer of the {role}. Its "
            f"layers: {[layer.name for layer in model.layers]}. "
            f"Received: {role} layer={name!r}"
        )
    return layers[0]


def check_features(features, student, teacher):
    if features is None:
        return []
    if not isinstance(features, (list, tuple)) or not all(
        isinstance(f, (list, tuple))
        and len(f) == 3
        and isinstance(f[0], str)
        and isinstance(f[1], str)
        and checks.is_real(f[2])
        and f[2] >= 0
        for f in features
    ):
        raise TypeError(
            "`features` must be a list of (teacher_layer, student_layer, weight) "
            "tuples with a weight >= 0, or None. "
            f"Received: features={features!r}"
        )
    taps = []
    for teacher_name, student_name, weight in features:
        t_layer = _find_layer(teacher, teacher_name, "teacher")
        s_layer = _find_layer(student, student_name, "student")
        taps.append((t_layer, s_layer, float(weight)))
    return taps


def projection(keras, student_shape, teacher_shape, names):
    """A learned map (a layer of `keras`, either Keras) from the student's
    feature to the teacher's, or None."""
    if student_shape == teacher_shape:
        return None
    if len(student_shape) == len(teacher_shape) == 1:
        projection = keras.layers.Dense(teacher_shape[-1], use_bias=False)
    elif len(student_shape) == len(teacher_shape) == 3 and (
        student_shape[:2] == teacher_shape[:2]
    ):
        projection = keras.layers.Conv2D(teacher_shape[-1], 1, use_bias=False)
    else:
        raise ValueError(
            f"`features` pairs teacher layer {names[0]!r} {teacher_shape} with "
            f"student layer {names[1]!r} {student_shape}: only the channel "
            "count may differ (a 1x1 convolution or Dense maps it). "
            f"Received: features pair={names!r}"
        )
    projection.build((None, *student_shape))
    return projection


def check_settings(
    student, teacher, temperature, alpha, distillation_loss, features, cache_teacher
):
    """The checks on a Distiller's settings (its models checked already);
    returns the feature taps."""
    check_temperature(temperature)
    check_alpha(alpha)
    checks.check_choice(
        distillation_loss, "distillation_loss", vocab.DISTILLATION_LOSSES
    )
    taps = check_features(features, student, teacher)
    checks.check_bool(cache_teacher, "cache_teacher")
    if cache_teacher and taps:
        raise ValueError(
            "`cache_teacher` caches logits only; teacher feature maps are "
            "recomputed. Use one or the other. Received: cache_teacher=True, "
            f"features={features!r}"
        )
    return taps


class DistillerSteps:
    """The state, passes and losses of a Distiller (mixed into both). A
    subclass sets `KERAS` (its `Keras`) and `_serialize_model` (its Keras's model
    serializer) and calls `_distill_init` from `__init__`."""

    KERAS = None
    _serialize_model = None

    def _distill_init(
        self,
        keras,
        shapes,
        student,
        teacher,
        *,
        temperature=4.0,
        alpha=0.1,
        distillation_loss="kl",
        features=None,
        cache_teacher=False,
        name="distiller",
    ):
        """Checks the settings (`tfopt.Distiller` documents them) against the
        models, whose output `shapes` (student's, teacher's) the subclass
        read, then builds the Distiller's state; `keras` is the Keras module
        of its models."""
        check_output_shapes(*shapes)
        taps = check_settings(
            student,
            teacher,
            temperature,
            alpha,
            distillation_loss,
            features,
            cache_teacher,
        )
        super().__init__(name=name)  # the subclass's Keras Model
        width = shapes[1][-1]  # the number of logits
        self.student = student
        # The teacher is left as given (a model the user goes on using, e.g.
        # to prune a copy of it, must stay trainable): it runs in inference
        # mode outside the tape, and its variables are not the Distiller's
        # trainable ones.
        self.teacher = teacher
        # A teacher that ends in softmax gives probabilities: their logarithms
        # are its logits (up to a constant, which softmax ignores).
        self.teacher_probabilities = ends_in_softmax(teacher)
        self.distillation_loss = distillation_loss
        self.features = [tuple(f) for f in features or ()]
        self.cache_teacher = cache_teacher
        constant = keras.initializers.Constant
        self.temperature = self.add_weight(
            name="temperature",
            shape=(),
            trainable=False,
            initializer=constant(temperature),
        )
        self.alpha = self.add_weight(
            name="alpha", shape=(), trainable=False, initializer=constant(alpha)
        )
        self._taps = None
        self.projections = []
        if taps:
            # Multi-output views sharing the models' layers: one call gives
            # the logits and the tapped features.
            self._taps = tuple(
                keras.Model(
                    model.inputs, [model.output] + [pair[i].output for pair in taps]
                )
                for i, model in enumerate((teacher, student))
            )
            self.projections = [
                projection(
                    keras,
                    tuple(s.output.shape[1:]),
                    tuple(t.output.shape[1:]),
                    (t.name, s.name),
                )
                for t, s, _ in taps
            ]
        self._feature_weights = [w for _, _, w in taps]
        self._cache = None
        if cache_teacher:
            self._cache = tf.lookup.experimental.MutableHashTable(
                tf.int64, tf.float32, default_value=tf.fill([width], float("nan"))
            )
        self._trackers = [
            keras.metrics.Mean(name=n)
            for n in ("loss", "student_loss", "distillation_loss")
        ]
        self.hard_loss = None

    def _distill_losses(self, x, y, sample_weight, teacher_out, training):
        """(student outputs, the loss to minimize, what the trackers log:
        per-example total with the student's regularization, hard, soft)."""
        student_out = self._student_outputs(x, training=training)
        total, hard, soft = self._per_example_losses(y, student_out, teacher_out)
        regularization = (
            tf.add_n(self.student.losses) if self.student.losses else tf.constant(0.0)
        )
        # Sum over the local batch / global batch: on N replicas the summed
        # gradients equal the single-replica ones.
        loss = tf.nn.compute_average_loss(
            total, sample_weight=sample_weight
        ) + tf.nn.scale_regularization_loss(regularization)
        return student_out, loss, (total + regularization, hard, soft)

    def _distill_track(self, values, sample_weight):
        for tracker, value in zip(self._trackers, values, strict=True):
            tracker.update_state(value, sample_weight=sample_weight)

    def get_config(self):
        return {
            "name": self.name,
            "student": self._serialize_model(self.student),
            "teacher": self._serialize_model(self.teacher),
            "temperature": float(self.temperature.numpy()),
            "alpha": float(self.alpha.numpy()),
            "distillation_loss": self.distillation_loss,
            "features": [list(f) for f in self.features] or None,
            "cache_teacher": self.cache_teacher,
            # Which Distiller `tfopt.Distiller.from_config` makes: the models'
            # own entries do not tell (tf_keras names public classes "keras").
            "keras_version": self.KERAS.value,
        }

    def _teacher_only(self):
        student = {id(v) for v in self.student.weights}
        return {id(v) for v in self.teacher.weights if id(v) not in student}

    @property
    def trainable_weights(self):
        teacher = self._teacher_only()
        return [v for v in super().trainable_weights if id(v) not in teacher]

    # Keras 3 builds the optimizer on `trainable_variables`, which it derives
    # from all variables, not from `trainable_weights`: without these the
    # optimizer would keep slots for every teacher weight.
    @property
    def trainable_variables(self):
        return self.trainable_weights

    @property
    def non_trainable_variables(self):
        return self.non_trainable_weights

    @property
    def non_trainable_weights(self):
        teacher = self._teacher_only()
        return super().non_trainable_weights + [
            v for v in super().trainable_weights if id(v) in teacher
        ]

    def _teacher_outputs(self, x):
        if self._taps is not None:
            return [tf.stop_gradient(o) for o in self._taps[0](x, training=False)]
        if self._cache is None:
            return [tf.stop_gradient(self.teacher(x, training=False))]
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        keys = tf.bitcast(tf.fingerprint(flat), tf.int64)
        cached = self._cache.lookup(keys)

        def compute():
            logits = tf.cast(self.teacher(x, training=False), tf.float32)
            with tf.control_dependencies([self._cache.insert(keys, logits)]):
                return tf.identity(logits)

        hit = tf.reduce_all(tf.math.is_finite(cached))
        return [tf.stop_gradient(tf.cond(hit, lambda: cached, compute))]

    def _student_outputs(self, x, training):
        if self._taps is not None:
            return list(self._taps[1](x, training=training))
        return [self.student(x, training=training)]

    def _per_example_losses(self, y, student_out, teacher_out):
        # Tensors, not variables: a Keras 3 variable in arithmetic with a
        # tensor loses the static shape.
        t = tf.convert_to_tensor(self.temperature)
        alpha = tf.convert_to_tensor(self.alpha)
        student_logits = tf.cast(student_out[0], tf.float32)
        # A cached teacher's logits come out of a tf.cond without a shape.
        teacher_logits = tf.ensure_shape(
            tf.cast(teacher_out[0], tf.float32), student_logits.shape
        )
        if self.teacher_probabilities:
            teacher_logits = tf.math.log(tf.maximum(teacher_logits, 1e-12))
        hard = self.hard_loss(y, student_logits)
        soft = SOFT_LOSSES[self.distillation_loss](teacher_logits, student_logits, t)
        total = alpha * hard + (1.0 - alpha) * t * t * soft
        for s_feat, t_feat, projection, weight in zip(
            student_out[1:],
            teacher_out[1:],
            self.projections,
            self._feature_weights,
            strict=True,
        ):
            if projection is not None:
                s_feat = projection(s_feat)
            error = tf.square(tf.cast(s_feat, tf.float32) - tf.cast(t_feat, tf.float32))
            total += weight * tf.reduce_mean(
                tf.reshape(error, [tf.shape(error)[0], -1]), axis=-1
            )
        return total, hard, soft

    def _student_variables(self):
        return self.student.trainable_variables + [
            v for p in self.projections if p is not None for v in p.trainable_variables
        ]
