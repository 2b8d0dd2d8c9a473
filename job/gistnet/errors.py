"""Errors a user can cause, each with its own process exit code.

The exit codes are a contract: the Helm chart's podFailurePolicy fails a Job at once
on the "bad input" codes and retries the others. Keep this table and README's in sync.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in gistnet: the traceback is printed
EXIT_USAGE = 2  # Click's own code for a bad flag or argument
EXIT_CONFIG = 3  # malformed YAML, unknown/mistyped key, out-of-range value
EXIT_DATA = 4  # data set unusable: empty prefix, too few images, duplicates across classes
EXIT_STORAGE = 5  # bucket missing, credentials refused, endpoint down, output not writable
EXIT_DEVICE = 6  # --device cuda without a GPU; out of device memory
EXIT_DIVERGED = 7  # NaN/inf loss during training
EXIT_INTERRUPTED = 8  # SIGTERM (preemption): checkpoint saved, re-run resumes
EXIT_MODEL = 9  # predict/export: no such run or model, run incomplete, weights or ONNX not the reported ones
EXIT_LEASED = 10  # another live process holds the (fold, model) unit's lease: retry later
EXIT_REFUSED = 11  # promote: the challenger was not promoted (a decision, not a failure)
EXIT_CTRL_C = 130  # Ctrl-C (SIGINT), the shell's 128 + 2

# The meaning column of README's exit-code table, word for word (a test compares them).
EXIT_CODES = {
    EXIT_OK: "success (or a finished run re-run: nothing to do)",
    EXIT_INTERNAL: "internal error (a bug; traceback printed)",
    EXIT_USAGE: "bad command-line usage",
    EXIT_CONFIG: "bad configuration",
    EXIT_DATA: "bad input data",
    EXIT_STORAGE: "storage unreachable, refused or not writable",
    EXIT_DEVICE: "requested device not available, or out of device memory",
    EXIT_DIVERGED: "training diverged (non-finite loss)",
    EXIT_INTERRUPTED: "interrupted by SIGTERM; checkpoint saved, re-run to resume",
    EXIT_MODEL: "trained model unusable (missing, incomplete run, sha256 mismatch)",
    EXIT_LEASED: "another live process is training this (fold, model) unit; retry later",
    EXIT_REFUSED: "promotion refused: the challenger is not non-inferior to the champion (promotion.json says why)",
    EXIT_CTRL_C: "interrupted by Ctrl-C (SIGINT); re-run to resume from the last checkpoint",
}

# Codes that retrying cannot fix: the chart fails the Job at once on these.
PERMANENT_EXIT_CODES = (EXIT_USAGE, EXIT_CONFIG, EXIT_DATA, EXIT_DEVICE, EXIT_DIVERGED, EXIT_MODEL, EXIT_REFUSED)


class GistnetError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""

    exit_code = EXIT_INTERNAL
    kind = "error"

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class ConfigError(GistnetError):
    exit_code = EXIT_CONFIG
    kind = "config error"


class DataError(GistnetError):
    exit_code = EXIT_DATA
    kind = "data error"


class StorageError(GistnetError):
    exit_code = EXIT_STORAGE
    kind = "storage error"


class TrackingError(StorageError):
    """The MLflow tracking server failed and ``tracking.required`` is true."""

    kind = "tracking error"


class PreconditionFailed(StorageError):
    """A conditional write found the object changed (or present) since it was read: the
    caller re-reads and decides again. Not an error a user sees unless a caller gives up."""

    kind = "storage conflict"


class PromotionRefused(GistnetError):
    """The gate kept the champion: a decision, not a failure (the chart does not retry it)."""

    exit_code = EXIT_REFUSED
    kind = "promotion refused"

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record  # what promotion.json holds


class DeviceError(GistnetError):
    exit_code = EXIT_DEVICE
    kind = "device error"


class OutOfDeviceMemory(DeviceError):
    """The batch does not fit the device: retrying the same Job cannot help."""

    kind = "out of device memory"


class DivergedError(GistnetError):
    exit_code = EXIT_DIVERGED
    kind = "training diverged"


class Interrupted(GistnetError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


class ModelError(GistnetError):
    """The trained model asked for cannot be used: no such run or model, the run is not
    complete, or the weights/ONNX file are not the ones its report names."""

    exit_code = EXIT_MODEL
    kind = "model error"


class LeaseHeld(GistnetError):
    """Another live process holds the lease of the (fold, model) unit this one would train."""

    exit_code = EXIT_LEASED
    kind = "unit leased"
