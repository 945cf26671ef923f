"""The one error type for bad caller input (images, boxes, queries)."""


class InputError(ValueError):
    """Raised for input the caller must fix: a bad image, bad boxes, an empty query.

    The message names the problem. Nodes catch it, log it (throttled), count it in
    diagnostics and keep running; services return it as ``success=false, message=...``.
    """
