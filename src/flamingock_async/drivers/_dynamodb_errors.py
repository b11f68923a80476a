"""Error codes of DynamoDB and botocore that the DynamoDB driver handles.

Private to the DynamoDB driver; `DynamoDriver.translate_error` uses these tables, and
`flamingock_async.drivers.dynamodb` re-exports the public names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from .._errors import (
    ConfigurationError,
    DriverAuthError,
    DriverError,
    DriverUnavailableError,
    FlamingockError,
)

__all__ = [
    "CancellationReason",
    "TransactionCanceledError",
    "CLIENT_ERROR_CODES",
    "EXCEPTION_CLASSES",
    "HANDLED_ERROR_CODES",
    "HANDLED_EXCEPTION_CLASSES",
    "error_code",
    "error_message",
    "is_retryable",
]

# Error codes after which a request certainly changed nothing, so sending it again is safe.
_RETRYABLE_CODES = frozenset(
    {
        "TransactionConflictException",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
    }
)
_RETRYABLE_REASONS = frozenset(
    {
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    }
)


# -- errors ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CancellationReason:
    """The cancellation reason DynamoDB gave for one action of a transaction."""

    index: int
    action: str
    code: str
    message: str


class TransactionCanceledError(DriverError):
    """DynamoDB cancelled a transaction; `reasons` lists each action that failed and why."""

    def __init__(self, message: str, *, reasons: Sequence[CancellationReason]) -> None:
        super().__init__(message)
        self.reasons = list(reasons)


# botocore error code -> (flamingock error, what to do next).
CLIENT_ERROR_CODES: dict[str, tuple[type[FlamingockError], str]] = {
    "ResourceNotFoundException": (
        DriverError,
        "check the table names and region, or run setup to create the tables",
    ),
    "ResourceInUseException": (
        DriverError,
        "wait until the table is no longer being created, updated or deleted",
    ),
    "ValidationException": (DriverError, "check the request parameters and item sizes"),
    "ConditionalCheckFailedException": (DriverError, "re-read the item and retry"),
    "TransactionCanceledException": (DriverError, "see the cancellation reason of each action"),
    "TransactionConflictException": (
        DriverError,
        "another transaction kept writing the same items; retry later or raise retry_timeout",
    ),
    "TransactionInProgressException": (DriverUnavailableError, "retry later"),
    "IdempotentParameterMismatchException": (
        DriverError,
        "use a new client request token for a different request",
    ),
    "ItemCollectionSizeLimitExceededException": (
        DriverError,
        "the item collection exceeded 10 GB; remove local secondary indexes or old items",
    ),
    "ProvisionedThroughputExceededException": (
        DriverUnavailableError,
        "raise the table's capacity or use billing_mode='PAY_PER_REQUEST'",
    ),
    "ThrottlingException": (DriverUnavailableError, "retry later or raise retry_timeout"),
    "RequestLimitExceeded": (
        DriverUnavailableError,
        "the account's request quota was exceeded; retry later or ask AWS for a higher quota",
    ),
    "LimitExceededException": (
        DriverError,
        "too many tables are being created or updated at once; retry later",
    ),
    "InternalServerError": (DriverUnavailableError, "retry later"),
    "ServiceUnavailable": (DriverUnavailableError, "retry later"),
    "UnrecognizedClientException": (
        DriverAuthError,
        "check the AWS access key id and the region",
    ),
    "InvalidSignatureException": (
        DriverAuthError,
        "check the AWS secret access key and the machine's clock",
    ),
    "MissingAuthenticationTokenException": (
        DriverAuthError,
        "configure AWS credentials for the driver",
    ),
    "IncompleteSignatureException": (DriverAuthError, "check the AWS credentials"),
    "ExpiredTokenException": (
        DriverAuthError,
        "refresh the AWS session token (for example with 'aws sso login')",
    ),
    "AccessDeniedException": (
        DriverAuthError,
        "grant the identity DynamoDB access to the audit and lock tables",
    ),
}

# botocore exception class name -> (flamingock error, what to do next).
EXCEPTION_CLASSES: dict[str, tuple[type[FlamingockError], str]] = {
    "EndpointConnectionError": (
        DriverUnavailableError,
        "check that the endpoint is reachable, or the endpoint_url and region",
    ),
    "ConnectTimeoutError": (DriverUnavailableError, "check the network path to the endpoint"),
    "ReadTimeoutError": (DriverUnavailableError, "retry later or raise the read timeout"),
    "ConnectionClosedError": (DriverUnavailableError, "retry later"),
    "NoCredentialsError": (
        DriverAuthError,
        "configure credentials through the AWS chain: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance or container role",
    ),
    "PartialCredentialsError": (
        DriverAuthError,
        "set both the access key id and the secret access key",
    ),
    "CredentialRetrievalError": (DriverAuthError, "check the credential provider configuration"),
    "NoRegionError": (
        ConfigurationError,
        "pass region=... (or ?region= in the store URL) or set AWS_DEFAULT_REGION",
    ),
    "ParamValidationError": (DriverError, "check the request parameters"),
}

HANDLED_ERROR_CODES = tuple(CLIENT_ERROR_CODES)
"""Every botocore error code that `DynamoDriver.translate_error` maps to a specific error."""

HANDLED_EXCEPTION_CLASSES = tuple(EXCEPTION_CLASSES)
"""Every botocore exception class (by name) that `translate_error` maps."""


def error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping):
        return None
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def error_message(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        message = response.get("Error", {}).get("Message")
        if isinstance(message, str):
            return message
    return str(error)


def _cancellation_codes(error: BaseException) -> list[str]:
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping):
        return []
    return [str(reason.get("Code", "None")) for reason in response.get("CancellationReasons", [])]


def is_retryable(error: BaseException) -> bool:
    """Return whether `error` proves the request changed nothing and may succeed if resent."""
    code = error_code(error)
    if code in _RETRYABLE_CODES:
        return True
    if code != "TransactionCanceledException":
        return False
    failed = [reason for reason in _cancellation_codes(error) if reason != "None"]
    return bool(failed) and all(reason in _RETRYABLE_REASONS for reason in failed)
