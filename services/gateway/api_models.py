"""The models inference serves, in OpenAI's list format."""

from __future__ import annotations

from fastapi import APIRouter

from chatplane.gateway import convert
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.errors import APIError
from chatplane.gateway.schemas import ModelList, ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_not_found(model_id: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"The model `{model_id}` does not exist or you do not have access to it.", param=param,
        code="model_not_found",
    )


@router.get("", response_model=ModelList, summary="List models")
async def list_models(principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    return {"object": "list", "data": [convert.model(m) for m in await backends.models.models()]}


# Model ids may contain slashes ("HuggingFaceTB/SmolLM2-135M-Instruct").
@router.get("/{model_id:path}", response_model=ModelOut, summary="Retrieve a model")
async def get_model(model_id: str, principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    found = await backends.models.get(model_id)
    if found is None:
        raise model_not_found(model_id)
    return convert.model(found)
