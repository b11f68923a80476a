"""Request and response bodies of protocol version 1, validated by pydantic.

Integers are bounded to signed 64 bits and strings to a few kilobytes, so every valid body
fits every store. The request size limit bounds the total. Integers and booleans are strict,
so `1.0` is not an integer and `0` is not a boolean.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from .._audit import AuditState
from .._changes import Recovery

__all__ = [
    "ErrorBody",
    "ExchangeRequest",
    "ExchangeResponse",
    "LockModel",
    "LockView",
    "CompareAndSetRequest",
    "CompareAndSetResponse",
    "ExtendRequest",
    "ReleaseRequest",
    "ReleaseResponse",
    "LockGrant",
    "AuditEntryModel",
    "FenceModel",
    "AppendRequest",
    "AppendResponse",
    "EntriesResponse",
    "ChangeRequest",
    "StageRequest",
    "ExecutionRequest",
    "ExecutionAction",
    "ChangeAction",
    "PlannedChangeModel",
    "PlannedStageModel",
    "AwaitInfo",
    "ExecutionResponse",
    "HealthResponse",
]

MAX_INT = 2**63 - 1
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=2_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response: what failed and whether the same request may succeed later."""

    code: str = Field(examples=["LOCK_LOST"])
    message: str
    retryable: bool


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    protocol: Literal[1] = 1


# -- authentication ---------------------------------------------------------------------------


class ExchangeRequest(_Strict):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    environment: Id
    service: Id


class ExchangeResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds until the bearer token expires.")
    organization_id: str
    project_id: str
    environment_id: str
    service_id: str
    organization: str
    project: str
    environment: str
    service: str


# -- lock ---------------------------------------------------------------------------------


class LockModel(_Strict):
    """One lock record; every write increments `version`, every acquisition `epoch`."""

    key: Id
    owner: Id | None
    epoch: Count
    version: Count
    lease_ms: Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
    acquired_at_ms: Count
    renewed_at_ms: Count
    host: Text = ""
    pid: Count = 0


class LockView(BaseModel):
    """The current record of a lock (None when absent) and its acquisition id."""

    lock: LockModel | None
    acquisition_id: str | None = Field(
        description="Changes with every write to the lock; a waiter quotes it to take over."
    )


class CompareAndSetRequest(_Strict):
    expected_version: Count | None = Field(
        description="The version the stored record must have; null to insert an absent record."
    )
    record: LockModel


class CompareAndSetResponse(BaseModel):
    applied: bool
    lock: LockModel | None = Field(description="The record stored after the request.")


class LockGrant(BaseModel):
    key: str
    owner: str
    epoch: int
    version: int
    lease_ms: int
    acquisition_id: str


class ExtendRequest(_Strict):
    owner: Id
    acquisition_id: Id


class ReleaseRequest(_Strict):
    owner: Id
    epoch: Count


class ReleaseResponse(BaseModel):
    released: Literal[True] = True


# -- audit --------------------------------------------------------------------------------


class AuditEntryModel(_Strict):
    entry_id: Id
    execution_id: Id
    stage: Id
    change_id: Id
    author: Text
    order: Id
    state: AuditState
    lock_epoch: Count
    sequence: Count
    created_at_ms: Count
    started_at_ms: Count | None = None
    finished_at_ms: Count | None = None
    duration_ms: Count | None = None
    transactional: StrictBool = False
    host: Text = ""
    pid: Count = 0
    error_type: Text | None = None
    error_message: Annotated[str, Field(max_length=20_000)] | None = None
    error_trace: Annotated[str, Field(max_length=200_000)] | None = None
    library_version: Text = ""
    metadata: dict[Annotated[str, Field(max_length=200)], Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # NaN and infinities parse from JSON text but cannot be written back as JSON.
        try:
            json.dumps(value, allow_nan=False)
        except ValueError as error:
            raise ValueError(f"metadata must be plain JSON: {error}") from None
        return value


class FenceModel(_Strict):
    key: Id
    owner: Id
    epoch: Count


class AppendRequest(_Strict):
    entry: AuditEntryModel
    fence: FenceModel


class AppendResponse(BaseModel):
    accepted: Literal[True] = True


class EntriesResponse(BaseModel):
    entries: list[AuditEntryModel]


# -- execution planning -------------------------------------------------------------------


class ChangeRequest(_Strict):
    id: Id
    order: Id
    author: Text = ""
    transactional: StrictBool = False
    recovery: Recovery = Recovery.MANUAL_INTERVENTION
    run_always: StrictBool = False
    local_state: AuditState | None = Field(
        default=None,
        description="The state the runner last saw; informational, the backend's log decides.",
    )


class StageRequest(_Strict):
    name: Id
    changes: Annotated[list[ChangeRequest], Field(max_length=5_000)]


class ExecutionRequest(_Strict):
    lock_key: Id = "flamingock"
    lease_ms: Annotated[StrictInt, Field(ge=300, le=86_400_000)] = 30_000
    last_acquisition_id: Id | None = Field(
        default=None, description="The acquisition id of the previous AWAIT response."
    )
    elapsed_ms: Count | None = Field(
        default=None,
        description="Milliseconds since that AWAIT response, measured on the runner's own clock.",
    )
    host: Text = ""
    pid: Count = 0
    stages: Annotated[list[StageRequest], Field(max_length=1_000)]


class ExecutionAction(str, enum.Enum):
    CONTINUE = "CONTINUE"
    EXECUTE = "EXECUTE"
    AWAIT = "AWAIT"
    ABORT = "ABORT"


class ChangeAction(str, enum.Enum):
    APPLY = "APPLY"
    SKIP = "SKIP"
    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"


class PlannedChangeModel(BaseModel):
    id: str
    action: ChangeAction
    state: AuditState | None = Field(description="The newest state in the backend's audit log.")


class PlannedStageModel(BaseModel):
    name: str
    changes: list[PlannedChangeModel]


class AwaitInfo(BaseModel):
    acquisition_id: str
    holder: str
    lease_ms: int
    retry_after_ms: int


class ExecutionResponse(BaseModel):
    action: ExecutionAction
    execution_id: str | None = None
    lock: LockGrant | None = None
    stages: list[PlannedStageModel] = Field(default_factory=list)
    wait: AwaitInfo | None = Field(default=None, alias="await")
    reason: str | None = None

    model_config = ConfigDict(populate_by_name=True)
