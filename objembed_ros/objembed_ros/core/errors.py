"""The error types every layer raises and the node maps to service answers.

One type per thing a caller can act on: fix the input (InputError), wait or retry
(ModelBusy), bring the model up (ModelNotReady), or look at the machine (ModelFailure).
"""


class InputError(ValueError):
    """Raised for input the caller must fix: a bad image, bad boxes, an empty query.

    The message names the problem. Nodes catch it, log it (throttled), count it in
    diagnostics and keep running; services return it as ``success=false, message=...``.
    """


class ModelNotReady(RuntimeError):
    """No model is loaded (unconfigured, cleaned up, or released while a call was running)."""


class ModelBusy(TimeoutError):
    """The model stayed busy past the caller's deadline (retry later or with a longer timeout)."""


class ModelFailure(RuntimeError):
    """An image or text pass failed inside the model or its runtime (CUDA out of memory, a
    TensorRT/onnxruntime error): not the caller's fault; the message names the cause."""
