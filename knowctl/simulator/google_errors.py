"""Google's error answers as the simulator sends them: 404 unknown model, 429 quota, 500, 403 and 400."""

from __future__ import annotations

import math
from typing import Any

import orjson

from knowctl.errors import error_body, retry_delay_text, retry_info
from knowctl.policy.paths import ApiCall, Family
from knowctl.simulator.quota import Refusal

# Google's answers when the project's API is disabled and when the key is not valid, with the
# account facts they carry (project number, console link, ErrorInfo metadata).
SIMULATED_PROJECT = "123456789012"
DENIED_BODY = {
    "error": {
        "code": 403,
        "message": f"Generative Language API has not been used in project {SIMULATED_PROJECT} before or it "
        "is disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
        f"generativelanguage.googleapis.com/overview?project={SIMULATED_PROJECT} then retry.",
        "status": "PERMISSION_DENIED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {
                    "consumer": f"projects/{SIMULATED_PROJECT}",
                    "service": "generativelanguage.googleapis.com",
                },
            }
        ],
    }
}
BAD_KEY_BODY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}
GEMINI_NOT_FOUND = (
    "models/{model} is not found for API version {version}, or is not supported for {method}. "
    "Call ListModels to see the list of available models and their supported methods."
)
VERTEX_NOT_FOUND = (
    "Publisher Model `projects/{project}/locations/{location}/publishers/google/models/{model}` "
    "was not found or your project does not have access to it. Please ensure you are using a "
    "valid model version. For more information, see: "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
)
GEMINI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor "
    "your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
    "* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}\nPlease retry in {delay}s."
)
VERTEX_QUOTA_MESSAGE = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
INTERNAL_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
_QUOTA_IDS = {
    "requests": (
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    ),
    "tokens": (
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
    ),
}


def not_found_error(call: ApiCall, method: str) -> bytes:
    """Google's 404 for a model it does not serve (or that does not answer ``method``)."""
    if call.family is Family.GEMINI:
        message = GEMINI_NOT_FOUND.format(model=call.model, version=call.version, method=method)
    else:  # Vertex names the resource in full; express mode has no project in the path
        message = VERTEX_NOT_FOUND.format(
            project=call.project or SIMULATED_PROJECT, location=call.location or "global", model=call.model
        )
    return error_body(404, message)


def quota_error(call: ApiCall, refusal: Refusal) -> bytes:
    """Google's 429 body for the family: Gemini API with RetryInfo, Vertex's shared-quota text."""
    if call.family is not Family.GEMINI:
        return error_body(429, VERTEX_QUOTA_MESSAGE)
    # Rounded up to the millisecond, so a client that waits exactly this long finds room.
    delay = max(0.001, math.ceil(refusal.retry_after * 1000) / 1000)
    metric, quota_id = _QUOTA_IDS[refusal.metric]
    message = GEMINI_QUOTA_MESSAGE.format(
        metric=metric, limit=refusal.limit, model=call.model, delay=retry_delay_text(delay)[:-1]
    )
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": call.model},
                    "quotaValue": str(refusal.limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        retry_info(delay),
    ]
    return error_body(429, message, details=details)


def in_array(body: bytes, array: bool) -> bytes:
    """Errors of a JSON-array stream come wrapped in ``[ ... ]``, as Google sends them."""
    return b"[" + body + b"]" if array else body


# The Files API and context caches. Google answers an unknown file or cache as a denial, not a
# 404, so that a name reveals nothing about other projects' resources.
FILE_DENIED = "You do not have permission to access the File {id} or it may not exist."
CACHE_DENIED = "CachedContent not found (or permission denied)"
VERTEX_CACHE_NOT_FOUND = "Not found: cached content metadata for {id}."


def status_error(code: int, status: str, message: str) -> bytes:
    """An error whose ``status`` is not the one :data:`knowctl.errors.STATUS_NAMES` gives its code
    (409 ``ALREADY_EXISTS`` rather than ``ABORTED``)."""
    return orjson.dumps({"error": {"code": code, "message": message, "status": status}})


# Batch jobs and long-running operations. The Gemini API answers an unknown one with Google's
# generic words for a missing resource; Vertex AI's wording here is the simulator's.
ENTITY_NOT_FOUND = "Requested entity was not found."
VERTEX_JOB_NOT_FOUND = "The BatchPredictionJob {name} does not exist."
VERTEX_OPERATION_NOT_FOUND = "The operation {name} does not exist."
# google.rpc.Status codes (gRPC's, not HTTP's), as an Operation's or a batch item's error has them.
RPC_CODES = {400: 3, 403: 7, 404: 5, 429: 8, 500: 13}
RPC_CANCELLED = 1


def rpc_status(http_code: int, message: str) -> dict[str, Any]:
    """A ``google.rpc.Status`` (an Operation's ``error``, a batch item's) for an HTTP error code."""
    return {"code": RPC_CODES.get(http_code, 2), "message": message}
