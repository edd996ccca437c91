"""Exports of a conversation as Markdown or JSON: queued as a job, then fetched when done."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict

from chatplane.gateway import convert
from chatplane.gateway.api_conversations import ConversationId
from chatplane.gateway.deps import BackendsDep, ConversationStub, CurrentPrincipal, SettingsDep
from chatplane.gateway.errors import upstream
from chatplane.gateway.ratelimit import Bucket
from chatplane.protos.conversation.v1 import conversation_pb2 as pb

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

ExportId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
Format = Literal["markdown", "json"]
Status = Literal["pending", "completed", "failed"]

_FORMAT = {"markdown": pb.EXPORT_FORMAT_MARKDOWN, "json": pb.EXPORT_FORMAT_JSON}
_FORMAT_NAME = {value: name for name, value in _FORMAT.items()}
_STATUS_NAME = {
    pb.EXPORT_STATUS_PENDING: "pending",
    pb.EXPORT_STATUS_COMPLETED: "completed",
    pb.EXPORT_STATUS_FAILED: "failed",
}


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Format = "markdown"


class ExportOut(BaseModel):
    id: str
    object: Literal["conversation.export"] = "conversation.export"
    conversation_id: str
    format: Format
    status: Status
    content: str | None  # the rendering (Markdown text, or the JSON document as text) once completed
    error: str | None
    created_at: int | None
    completed_at: int | None


def export_out(e: pb.Export) -> dict[str, Any]:
    done = e.status == pb.EXPORT_STATUS_COMPLETED
    return {
        "id": e.id,
        "object": "conversation.export",
        "conversation_id": e.conversation_id,
        "format": _FORMAT_NAME.get(e.format, "markdown"),
        "status": _STATUS_NAME.get(e.status, "pending"),
        "content": e.content if done else None,
        "error": e.error or None,
        "created_at": convert.unix(e, "created_at"),
        "completed_at": convert.unix(e, "completed_at"),
    }


@router.post(
    "/{conversation_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportOut,
    summary="Export a conversation as Markdown or JSON (a job: poll the returned export)",
)
async def create_export(
    conversation_id: ConversationId,
    principal: CurrentPrincipal,
    stub: ConversationStub,
    backends: BackendsDep,
    settings: SettingsDep,
    body: ExportCreate | None = None,
) -> dict:
    fmt = body.format if body is not None else "markdown"
    if settings.exports_per_hour_per_user:  # each export is a job and a stored copy of the conversation
        bucket = Bucket(f"export:user:{principal.user_id}", settings.exports_per_hour_per_user, 3600)
        await backends.admission.attempt([bucket], "Too many exports requested.")
    with upstream("conversation"):
        created = await stub.CreateExport(
            pb.CreateExportRequest(user_id=principal.user_id, conversation_id=conversation_id, format=_FORMAT[fmt]),
            timeout=settings.upstream_timeout_seconds,
        )
    return export_out(created)


@router.get(
    "/{conversation_id}/export/{export_id}",
    response_model=ExportOut,
    summary="An export's status, and its content once completed",
)
async def get_export(
    conversation_id: ConversationId,
    export_id: ExportId,
    principal: CurrentPrincipal,
    stub: ConversationStub,
    settings: SettingsDep,
) -> dict:
    with upstream("conversation"):
        found = await stub.GetExport(
            pb.GetExportRequest(user_id=principal.user_id, conversation_id=conversation_id, export_id=export_id),
            timeout=settings.upstream_timeout_seconds,
        )
    return export_out(found)
