"""The emulator's copy of fal's per-endpoint OpenAPI document
(`GET /api/openapi/queue/openapi.json?endpoint_id=<id>`), written from its registry's schemas.

It lets `renderer models add ENDPOINT` be tried offline, and it is the inverse of
renderer.models.openapi: reading this document back gives the same input and output schemas
(a property the tests check for every bundled endpoint).
"""

from __future__ import annotations

import re
from typing import Any

from renderer.models.schemas import PROVENANCE, SchemaRegistry, relocated


def _component(node: Any) -> Any:
    """A schema node in OpenAPI 3.1's dialect: refs under components, provenance dropped."""
    return relocated(node, lambda name: f"#/components/schemas/{name}", PROVENANCE | {"$defs"})


def document(registry: SchemaRegistry, endpoint: str) -> dict[str, Any]:
    """fal's queue OpenAPI document for `endpoint` (which the registry must know)."""
    schema = registry.schema(endpoint)

    def json_body(ref: dict[str, Any]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": ref}}}

    stem = "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", endpoint) if w)
    components: dict[str, Any] = {
        name: _component(body) for name, body in schema.get("$defs", {}).items() if name != "Output"
    }
    components[f"{stem}Input"] = _component(schema)
    result: dict[str, Any] = {"description": "Result of the request."}  # no output schema known
    if "Output" in schema.get("$defs", {}):
        components[f"{stem}Output"] = _component(schema["$defs"]["Output"])
        result = json_body({"$ref": f"#/components/schemas/{stem}Output"})
    components["QueueStatus"] = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
            "request_id": {"type": "string"},
        },
        "required": ["status", "request_id"],
    }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"Queue OpenAPI for {endpoint}",
            "version": "1.0.0",
            "x-fal-metadata": {"endpointId": endpoint, "category": "text-to-image"},
        },
        "components": {
            "securitySchemes": {
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "Authorization"}
            },
            "schemas": components,
        },
        "paths": {
            f"/{endpoint}": {
                "post": {
                    "requestBody": {
                        "required": True,
                        **json_body({"$ref": f"#/components/schemas/{stem}Input"}),
                    },
                    "responses": {"200": json_body({"$ref": "#/components/schemas/QueueStatus"})},
                }
            },
            f"/{endpoint}/requests/{{request_id}}": {"get": {"responses": {"200": result}}},
        },
        "servers": [{"url": "https://queue.fal.run"}],
        "security": [{"apiKeyAuth": []}],
    }
