"""The one error tree of ollimg.

Every error a user can see is an OllimgError: a message that says what happened and what to do,
and a short machine code that travels on the wire so the client can rebuild the exception.
Imports nothing from the rest of ollimg.
"""

from __future__ import annotations


class OllimgError(Exception):
    code = "error"
    exit_code = 1
    http_status = 500
    param: str | None = None  # the request field at fault, when one is (sent as `param`)

    def __init__(self, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param

    def __str__(self) -> str:
        return self.message


class InvalidInput(OllimgError):
    code = "invalid_request"
    exit_code = 2
    http_status = 400


class InvalidName(InvalidInput):
    code = "invalid_name"


class UploadTooLarge(InvalidInput):
    """A request body over the upload limit (OLLIMG_MAX_UPLOAD), refused before it is read whole."""

    code = "upload_too_large"
    http_status = 413


class InvalidModel(InvalidInput):
    """A model directory, file or weight that is not what it claims to be."""

    code = "invalid_model"


class OverLimit(InvalidInput):
    """A request beyond a configured limit (pixels, images, steps): say the limit and its setting."""

    code = "over_limit"


class TooLarge(InvalidInput):
    """A request body beyond OLLIMG_MAX_BODY."""

    code = "body_too_large"
    http_status = 413


class ModelNotFound(OllimgError):
    code = "model_not_found"
    exit_code = 3
    http_status = 404


class ImageNotFound(OllimgError):
    """An id that is not in the gallery."""

    code = "image_not_found"
    exit_code = 3
    http_status = 404


class StoreError(OllimgError):
    code = "store_error"


class DigestMismatch(StoreError):
    code = "digest_mismatch"


class NoSpace(StoreError):
    code = "no_space"
    http_status = 507


class RegistryError(OllimgError):
    code = "registry_error"
    exit_code = 4
    http_status = 502


class AuthError(RegistryError):
    code = "unauthorized"
    http_status = 401


class RuntimeFailed(OllimgError):
    code = "runtime_failed"
    exit_code = 5
    http_status = 500

    def __init__(self, message: str, code: str | None = None, stderr_tail: str = ""):
        super().__init__(message, code)
        self.stderr_tail = stderr_tail


class OutOfMemory(RuntimeFailed):
    code = "out_of_memory"
    http_status = 507


class InsufficientMemory(OllimgError):
    """Refused before any work: the request's estimated peak memory does not fit the device."""

    code = "insufficient_memory"
    http_status = 507


class TimedOut(OllimgError):
    """A generation ran past OLLIMG_MAX_GENERATION_TIME and was cancelled."""

    code = "generation_timeout"
    http_status = 504


class Cancelled(OllimgError):
    code = "cancelled"
    exit_code = 130
    http_status = 499


class Busy(OllimgError):
    code = "busy"
    http_status = 503

    def __init__(self, message: str, code: str | None = None, retry_after: int = 5):
        super().__init__(message, code)
        self.retry_after = retry_after


class ServerUnreachable(OllimgError):
    code = "server_unreachable"
    exit_code = 4
    http_status = 503


def by_code(code: str) -> type[OllimgError]:
    """The error class for a wire code (the client rebuilds exceptions with it)."""
    stack: list[type[OllimgError]] = [OllimgError]
    while stack:
        cls = stack.pop()
        if cls.code == code:
            return cls
        stack.extend(cls.__subclasses__())
    return OllimgError
