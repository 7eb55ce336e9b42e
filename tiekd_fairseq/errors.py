"""The plugin's own error type, and how fairseq commands print it (no fairseq or torch import).

Importing the plugin (``--user-dir tiekd_fairseq``) installs :func:`excepthook`: a
:class:`ConfigError` that reaches the top of ``fairseq-train``, ``fairseq-generate`` (or any
other command) is printed as one line, ``tiekd: error: <message>``, and the process exits
with status 1; every other exception keeps Python's (or the previous hook's) traceback.
"""
import importlib
import re
import sys

PREFIX = "tiekd: error: "


class ConfigError(ValueError):
    """Bad configuration or input that the user must fix (an option, a teacher, a pool).

    fairseq commands print it as one line, ``tiekd: error: <message>``, without a traceback.
    """


# The last line of a Python traceback: "package.module.Class: message".
_LAST_LINE = re.compile(r"^([A-Za-z_][\w.]*)\.([A-Za-z_]\w*): (.+)$")


def config_error_message(exc: BaseException):
    """The one-line message for ``exc`` if it is one of the plugin's configuration errors,
    else None.

    Also recognises a ConfigError raised in a child process of ``torch.multiprocessing.spawn``
    (fairseq's multi-GPU path): the parent re-raises it as ``ProcessRaisedException`` whose
    text is the child's traceback, ending in ``tiekd_fairseq.teacher.TeacherError: <message>``.
    """
    if isinstance(exc, ConfigError):
        return " ".join(str(exc).split("\n"))
    if type(exc).__name__ == "ProcessRaisedException":
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        match = _LAST_LINE.match(lines[-1]) if lines else None
        if match:
            module = sys.modules.get(match.group(1))
            if module is None and match.group(1).startswith("tiekd_fairseq"):
                try:
                    module = importlib.import_module(match.group(1))
                except Exception:  # noqa: BLE001 - an unimportable module is not ours to report
                    module = None
            cls = getattr(module, match.group(2), None)
            if isinstance(cls, type) and issubclass(cls, ConfigError):
                return match.group(3)
    return None


_previous_hook = None


def excepthook(exc_type, exc, tb):
    message = config_error_message(exc) if exc is not None else None
    if message is None:
        return (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
    sys.stderr.write(PREFIX + message + "\n")
    sys.stderr.flush()


def install_excepthook():
    """Print uncaught ConfigErrors as one line (idempotent; chains to the hook it replaces)."""
    global _previous_hook
    if sys.excepthook is excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = excepthook


def describe_load_error(path: str, err: BaseException) -> str:
    """What went wrong when torch could not load ``path``, in one line and without torch's
    advice to re-run ``torch.load`` with ``weights_only=False`` (the opposite of what to do
    with a file one cannot trust)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        head = None
    # torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle
    # (protocol >= 2 starts with the PROTO opcode 0x80). Anything else was never a checkpoint.
    if head is not None and not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
        if not head:
            return "the file is empty"
        text = head[:24].decode("utf-8", "replace")
        printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text) / max(len(text), 1)
        what = f"a text file starting {text.splitlines()[0]!r}" if printable > 0.95 and text.strip() else "some other file"
        return f"not a file written by torch.save: {what}, not a zip archive or a pickle"
    message = str(err)
    if "Weights only load failed" in message:  # keep torch's diagnosis, drop its advice
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", message, re.S)
        message = "safe loading (weights_only=True) failed: " + (found.group(1) if found else "unreadable pickle")
    message = " ".join(message.split())
    return f"{type(err).__name__}: {message}"

