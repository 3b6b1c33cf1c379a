"""Writing what tfopt exports, whichever Keras made it: a file or a
directory appears whole or not at all, and never replaces one unless asked.
"""

import os
import shutil
import tempfile


def _umask():
    # Python has no getter: set and restore at once (no file is created
    # meanwhile by this thread).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path, data, overwrite):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tfopt-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        # mkstemp makes the file 0600; give it the mode open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if `path` appeared meanwhile: never clobber.
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_directory_atomically(path, fill):
    """Makes directory `path` by `fill(staging)` in a staging directory
    beside it, then moves it into place (an existing `path`, when the
    caller allows overwriting, goes with the staging directory), so a crash
    never leaves half a directory."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tfopt-")
    try:
        fill(os.path.join(staging, "model"))
        if os.path.exists(path):
            os.rename(path, os.path.join(staging, "previous"))
        os.rename(os.path.join(staging, "model"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
