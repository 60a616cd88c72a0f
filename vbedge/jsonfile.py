"""Reading the JSON files vbedge writes (manifests, layouts, metadata) with one error contract."""

import json

from .errors import FormatError


def read_json_object(path):
    """Parse the JSON file ``path``, which must hold an object; return it as a dict.

    Raises FormatError naming the file when it cannot be read, is not valid JSON (truncated,
    corrupt, not UTF-8) or holds something other than an object. Callers check that the file
    exists first, so they can say what kind of folder it was missing from.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data
