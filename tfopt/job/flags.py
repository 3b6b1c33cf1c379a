"""absl flags for tfopt's scripts, generated from `tfopt.job.config.Config`.

Each field of `Config` is one flag of the same name, with the field's
default, help and allowed values; `config_from_flags` turns the parsed
flags back into a `Config`. Nothing here imports TensorFlow, so a script
parses and checks its flags in well under a second. Only `scripts/` and
this module touch absl flags.
"""

import dataclasses

from absl import flags

from tfopt.job.config import Config

FLAGS = flags.FLAGS

_DEFINE = {
    "string": flags.DEFINE_string,
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool,
    "enum": flags.DEFINE_enum,
    "list": flags.DEFINE_list,
}


def define_all():
    """Defines one flag per `Config` field, once per process. A script makes
    them its key flags (listed by --help) with
    `flags.adopt_module_key_flags(tfopt.job.flags)`."""
    define_fields([field.name for field in dataclasses.fields(Config)])


def define_fields(names):
    """Defines the flags of the `Config` fields `names` (once per process)."""
    for field in dataclasses.fields(Config):
        meta = field.metadata
        if field.name not in names or field.name in FLAGS:
            continue
        default, kwargs = field.default, {}
        if meta["kind"] == "enum":
            kwargs["enum_values"] = list(meta["choices"])
        if meta["kind"] in ("integer", "float"):
            kwargs.update(lower_bound=meta["low"], upper_bound=meta["high"])
        if meta["kind"] == "list":
            default = list(default)
        _DEFINE[meta["kind"]](
            name=field.name, default=default, help=meta["help"], **kwargs
        )
        if meta["kind"] == "list":
            choices = meta["choices"]
            flags.register_validator(
                field.name,
                lambda values, c=choices: set(values) <= set(c),
                message=f"--{field.name} takes a comma list of {', '.join(choices)}.",
            )
        if meta["alias"]:
            flags.DEFINE_alias(meta["alias"], field.name)


def config_from_flags():
    """The `Config` the parsed flags describe (not checked yet)."""
    values = {}
    for field in dataclasses.fields(Config):
        value = FLAGS[field.name].value
        values[field.name] = tuple(value) if field.metadata["kind"] == "list" else value
    return Config(**values)
