"""The main job's `--model_dir`: what a run checks there before it starts
(a file in its place, another run's settings, the user's own files) and
how the chief claims it. Every path goes through `tf.io.gfile`, so it may
be on Cloud Storage."""

import json
import os

import tensorflow as tf

from tfopt.job.checks import CHANNEL_SETTINGS
from tfopt.job.fields import ConfigError


def check(config, worker):
    """This worker's checks of the paths it was given; the chief's also of
    what `model_dir` holds. Changes nothing. Paths may be on any TensorFlow
    file system (`gs://`), so every check goes through `tf.io.gfile`."""
    gfile = tf.io.gfile
    if gfile.exists(config.model_dir) and not gfile.isdir(config.model_dir):
        raise ConfigError(
            f"`model_dir={config.model_dir}` is a file; it must be a "
            "directory (new or from this same command)."
        )
    if not worker.is_chief:
        return
    inside = os.path.join(config.model_dir.rstrip("/"), "")
    for name in ("model", "teacher", "dataset"):
        path = getattr(config, name) or ""
        path = path.split(":", 1)[1] if name == "dataset" and ":" in path else path
        if config.overwrite and path.startswith(inside):
            raise ConfigError(
                f"`{name}={getattr(config, name)}` is inside `model_dir="
                f"{config.model_dir}`, which `overwrite` empties: move it out."
            )
    previous = os.path.join(config.model_dir, "config.json")
    if (
        gfile.isdir(config.model_dir)
        and gfile.listdir(config.model_dir)
        and (not gfile.exists(previous))
    ):
        # Not a tfopt run: never write into (or, with --overwrite, delete) it.
        raise ConfigError(
            f"`model_dir={config.model_dir}` holds files but no tfopt "
            "run (no config.json); give a new or empty directory."
        )
    if gfile.exists(previous) and not config.overwrite:
        with gfile.GFile(previous) as file:
            if _identity(json.load(file)) != _identity(config.settings()):
                raise ConfigError(
                    f"`model_dir={config.model_dir}` holds a run with other flags; "
                    "use a new directory, or `overwrite` to replace it."
                )


def claim(config):
    """The chief makes `model_dir` this run's, once every worker agreed."""
    gfile = tf.io.gfile
    if config.overwrite and gfile.isdir(config.model_dir):
        gfile.rmtree(config.model_dir)
    for sub in ("checkpoints", "logs", "export"):
        gfile.makedirs(os.path.join(config.model_dir, sub))
    with gfile.GFile(os.path.join(config.model_dir, "config.json"), "w") as file:
        file.write(json.dumps(config.settings(), indent=2))


def _identity(settings):
    """What a run directory's settings must match to resume: the channel
    settings count only in a run that prunes channels (their defaults may
    change without touching a weight-pruning run)."""
    if settings.get("prune") and settings.get("prune_structure") == "channels":
        return settings
    return {k: v for k, v in settings.items() if k not in CHANNEL_SETTINGS}
