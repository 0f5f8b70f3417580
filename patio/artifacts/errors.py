"""Errors of the download path, as members of Patio's one error family.

Each says what failed and names the object (``s3://bucket/key``, a repo path)
but never a credential or a signed query string.  ``Transient`` is internal:
the retry loop consumes it, and only when retries run out does it surface as
``ArtifactUnavailable``.
"""

from typing import Optional

from patio.errors import BadRequest, NotFound, PatioError, ServiceUnavailable


class ArtifactError(PatioError):
    """The remote store answered with a failure we cannot fix by retrying."""

    status = 502
    error_type = "artifact_error"


class ArtifactNotFound(NotFound):
    """The bucket, object, repo or revision does not exist (or a listing was empty)."""

    error_type = "artifact_not_found"


class ArtifactAccessDenied(PatioError):
    """401/403 from the store: wrong or missing credentials.  Never retried."""

    status = 403
    error_type = "artifact_access_denied"


class CredentialsInvalid(BadRequest):
    """Credentials a request brought (or a mounted secret it named) are malformed: not JSON, a
    key that is not a key.  The caller's to fix; never a 403, which would blame the store."""

    error_type = "invalid_credentials"


class CredentialsMisconfigured(PatioError):
    """Credentials the operator configured (``GOOGLE_APPLICATION_CREDENTIALS``) are malformed."""

    status = 500
    error_type = "credentials_misconfigured"


class ArtifactUnavailable(ServiceUnavailable):
    """Transient failures went on past the retry budget."""

    error_type = "artifact_unavailable"


class ArtifactCorrupt(PatioError):
    """Bytes arrived but do not match the size or hash the store declared."""

    status = 502
    error_type = "artifact_integrity_error"


class LocalWriteError(PatioError):
    """The target directory cannot be written (disk full, read-only, not a directory)."""

    status = 507
    error_type = "local_storage_error"


class DownloadCancelled(PatioError):
    """Shutdown or an unload stopped the download; what was written stays resumable."""

    status = 503
    error_type = "download_cancelled"


class Transient(Exception):
    """A failure worth retrying (connection reset, timeout, 429/5xx).  Internal only."""

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ObjectChanged(Exception):
    """The remote object changed under a download (412, or a new ETag/size).  Internal only."""
