"""An output inside the data (or the data inside an output) is refused before anything is written.

Writing a run under the data URI adds objects that the next listing of the data sees (every
later run on that data then fails on an "unknown class folder"); reading data from under an
output reads runs as images. Local paths are compared after resolving links and ``..``; S3 URIs
by bucket and prefix, one path segment at a time (``s3://b/data2`` is not inside ``s3://b/data``),
after the normalisation the store applies to a prefix (``storage.safe_key``: ``.`` and empty
segments dropped, as S3 keys are written, ``..`` refused), so ``s3://b/./data`` is ``s3://b/data``.
"""

from __future__ import annotations

from pathlib import Path

from gistnet.data.storage import is_s3, redact, safe_key
from gistnet.errors import ConfigError


def _parts(uri: str) -> tuple[str, ...]:
    if is_s3(uri):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        return ("s3:", bucket) + tuple(p for p in safe_key(prefix).split("/") if p)
    return Path(uri.removeprefix("file://")).expanduser().resolve().parts


def inside(inner: str, outer: str) -> bool:
    """Whether ``inner`` is ``outer`` or below it."""
    a, b = _parts(inner), _parts(outer)
    return len(a) >= len(b) and a[:len(b)] == b


def check_apart(data_uri: str, output_uri: str, data_flag: str = "data.uri", output_flag: str = "output.uri") -> None:
    """ConfigError naming both URIs when either is inside the other."""
    if not data_uri or not output_uri:
        return
    if inside(output_uri, data_uri):
        raise ConfigError(f"{output_flag} {redact(output_uri)} is inside {data_flag} {redact(data_uri)}: "
                          "the outputs would be read as data by the next run; write them elsewhere")
    if inside(data_uri, output_uri):
        raise ConfigError(f"{data_flag} {redact(data_uri)} is inside {output_flag} {redact(output_uri)}: "
                          "a run's outputs would be read as data; keep the data elsewhere")
