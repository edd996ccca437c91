"""The models inference serves, in OpenAI's list format."""

from __future__ import annotations

from fastapi import APIRouter

from chatplane.gateway import convert
from chatplane.gateway.deps import BackendsDep, CurrentPrincipal
from chatplane.gateway.errors import APIError, invalid
from chatplane.gateway.schemas import ModelList, ModelOut
from chatplane.protos.inference.v1 import inference_pb2

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_not_found(model_id: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"The model `{model_id}` does not exist or you do not have access to it.", param=param,
        code="model_not_found",
    )


def check_max_tokens(model: inference_pb2.Model, max_tokens: int | None, param: str) -> None:
    """A 400 naming ``param`` when ``max_tokens`` cannot fit the model's context window whatever the prompt (a prompt
    has at least one token). Checked before admission, so that it is never answered as a rate limit."""
    if max_tokens is None or not model.max_model_len or max_tokens < model.max_model_len:
        return
    raise invalid(
        f"{param} is too large: {max_tokens}. This model's context window is {model.max_model_len} tokens, so it "
        f"supports at most {model.max_model_len - 1} completion tokens, whereas you provided {max_tokens}.",
        param=param, code="invalid_value",
    )


@router.get("", response_model=ModelList, summary="List models")
async def list_models(principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    return {"object": "list", "data": [convert.model(m) for m in await backends.inference.wait_models()]}


# Model ids may contain slashes ("HuggingFaceTB/SmolLM2-135M-Instruct").
@router.get("/{model_id:path}", response_model=ModelOut, summary="Retrieve a model")
async def get_model(model_id: str, principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    found = next((m for m in await backends.inference.wait_models() if m.id == model_id), None)
    if found is None:
        raise model_not_found(model_id)
    return convert.model(found)
