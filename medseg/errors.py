"""Errors that carry a one-line, user-facing message."""


class MedsegError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the file and what is wrong; the CLI prints it
    without a traceback and exits non-zero.
    """


class MedsegWarning(UserWarning):
    """A doubt about the user's input that does not stop the work (one line, naming the file).

    The CLI prints it as ``warning: ...`` on stderr; the napari widget shows it in its status.
    """


def need_extra(module: str, feature: str, extra: str = "dicom"):
    """Import an optional dependency, or raise a one-line error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MedsegError(f"{feature} needs the optional package '{module}': pip install 'medseg[{extra}]'") from None
