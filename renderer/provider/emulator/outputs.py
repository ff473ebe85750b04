"""What a completed request hands back: its outcome (an output, a 422 or a runner error), the
images rendered for it and the file URLs that serve them.

The output's shape follows the endpoint's Output schema (seed, timings, has_nsfw_concepts, prompt
only where the model documents them); an input failing the endpoint's schema gets fal's 422
`detail` list. Images are pure functions of the input and, with a noise setting, of the request id
(`pictures.render`), kept in `files` for the
emulator's life and served at /_files/{id}/{n}.{ext} (or inlined as data URLs for sync_mode).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import Counter
from typing import Any

from renderer.models.schemas import SchemaRegistry
from renderer.models.sizes import capped, requested_size
from renderer.provider.emulator.config import EmulatorConfig
from renderer.provider.emulator.faults import Chance, bomb_png
from renderer.provider.emulator.pictures import render
from renderer.provider.emulator.queue import ModelRequest

# Input keys that do not move the picture's content (prompt and seed choose the picture itself).
_NOT_DRAWN = frozenset(
    {
        "prompt",
        "seed",
        "num_images",
        "output_format",
        "sync_mode",
        "image_size",
        "aspect_ratio",
        "resolution",
    }
)


class Outputs:
    """The outcomes of requests and the image files they produced."""

    def __init__(
        self,
        registry: SchemaRegistry,
        config: EmulatorConfig,
        chance: Chance,
        counts: Counter[str],
        *,
        variants: dict[str, str],
    ) -> None:
        self.registry = registry
        self.config = config  # the emulator's, replaced with it (faults, max_side)
        self.chance = chance
        self.counts = counts
        self.variants = variants  # endpoint → salt: that model renders differently
        self.files: dict[tuple[str, int], tuple[bytes, str]] = {}  # (request id, n) → bytes, type
        self._shapes: dict[tuple[str, bool, str], list[Any]] = {}  # input shape → violations

    def outcome(self, req: ModelRequest) -> tuple[int, Any]:
        endpoint, payload = req.endpoint, req.payload
        if not isinstance(payload, dict):
            return 422, {
                "detail": [
                    {
                        "loc": ["body"],
                        "msg": "Input should be a valid dictionary",
                        "type": "dict_type",
                        "input": payload,
                    }
                ]
            }
        if endpoint in self.registry:
            violations = self.violations(endpoint, payload)
            if violations:
                return 422, {"detail": [detail(v, payload) for v in violations]}
        if self.chance(self.config.faults.runner_error):
            self.counts["fault:runner_error"] += 1
            return 500, {"detail": "Internal Server Error", "error_type": "runner_server_error"}
        return 200, self.output(req)

    def violations(self, endpoint: str, payload: dict[str, Any]) -> list[Any]:
        """The schema's verdict, computed once per input shape (everything but prompt and seed).

        A string prompt and an integer seed are what every endpoint's schema asks of them;
        other values take the full check, so the answer is the same, only cheaper.
        """
        prompt, seed = payload.get("prompt"), payload.get("seed", 1)
        if not isinstance(prompt, str) or not isinstance(seed, int) or isinstance(seed, bool):
            return self.registry.check(endpoint, payload)
        rest = {k: v for k, v in payload.items() if k not in ("prompt", "seed")}
        key = (endpoint, "seed" in payload, json.dumps(rest, sort_keys=True))
        found = self._shapes.get(key)
        if found is None:
            probe = {**rest, "prompt": prompt, **({"seed": seed} if "seed" in payload else {})}
            found = self._shapes[key] = self.registry.check(endpoint, probe)
        return found

    def pictures(self, req: ModelRequest) -> tuple[int, list[tuple[Any, ...]]]:
        """(the seed, the arguments of render() for each image) of a valid input: pure, so it can run early."""
        payload = req.payload
        props = self.registry.properties(req.endpoint) if req.endpoint in self.registry else {}
        documented = {k: v["default"] for k, v in props.items() if "default" in v}
        seed = payload.get("seed")
        if not isinstance(seed, int) or seed in (0, -1):  # 0 and -1 mean "random" to some models
            seed = int.from_bytes(hashlib.sha256(req.id.encode()).digest()[:4], "big") or 1
        count = int(payload.get("num_images", documented.get("num_images", 1)))
        fmt = str(payload.get("output_format", documented.get("output_format", "png")))
        size = capped(requested_size(payload, documented), self.config.max_side)
        prompt = str(payload.get("prompt", ""))
        variant = self.variants.get(req.endpoint, "")
        # What the picture drifts with: every other parameter, documented defaults included (an
        # omitted value is the default's picture), size and delivery apart (size has its own effect).
        params = json.dumps(
            {k: v for k, v in {**documented, **payload}.items() if k not in _NOT_DRAWN},
            sort_keys=True,
        )
        noise = self.config.noise
        grain = int.from_bytes(hashlib.sha256(req.id.encode()).digest()[4:12], "big")
        return seed, [
            (req.endpoint, prompt, seed, i, size, fmt, variant, params, noise, grain)
            for i in range(count)
        ]

    def prerender(self, req: ModelRequest) -> asyncio.Future[list[tuple[bytes, str]]] | None:
        """Render a valid request's images in a thread while its slot sleeps: the event loop stays free
        for the other requests (drawing and PNG encoding were about half this server's CPU per job, all
        at once at the end of a round), so slots wake on time. Same bytes as rendering at the end."""
        if not isinstance(req.payload, dict) or (
            req.endpoint in self.registry and self.violations(req.endpoint, req.payload)
        ):
            return None
        try:
            _, pictures = self.pictures(req)
        except (TypeError, ValueError):
            return None
        return asyncio.get_running_loop().run_in_executor(
            None, lambda: [render(*args) for args in pictures]
        )

    def output(self, req: ModelRequest) -> dict[str, Any]:
        payload = req.payload
        known = req.endpoint in self.registry
        seed, pictures = self.pictures(req)
        count, prompt = len(pictures), str(payload.get("prompt", ""))
        rendered = req.pictures if req.pictures is not None and len(req.pictures) == count else None
        req.pictures = None  # the bytes live on in self.files only (for the emulator's life; 404 after a retention fault)
        self.counts["prerendered"] += rendered is not None
        images = []
        for i in range(count):
            width, height = pictures[i][4]
            data, content_type = rendered[i] if rendered is not None else render(*pictures[i])
            if self.chance(self.config.faults.bomb_image):
                self.counts["fault:bomb_image"] += 1
                data, content_type = bomb_png(), "image/png"
            ext = content_type.split("/")[1]
            if payload.get("sync_mode"):
                url = f"data:{content_type};base64," + base64.b64encode(data).decode()
            else:
                self.files[(req.id, i)] = (data, content_type)
                url = f"{req.files or req.base}/_files/{req.id}/{i}.{ext}"
            images.append(
                {
                    "url": url,
                    "content_type": content_type,
                    "file_name": f"{i}.{ext}",
                    "file_size": len(data),
                    "width": width,
                    "height": height,
                }
            )
        output: dict[str, Any] = {"images": images}
        out_props = {}
        if known and self.registry.has_output_schema(req.endpoint):
            out_props = self.registry.schema(req.endpoint)["$defs"]["Output"].get("properties", {})
        if "seed" in out_props or not out_props:
            output["seed"] = seed
        if "timings" in out_props:
            output["timings"] = {"inference": round(req.inference, 4)}
        if "has_nsfw_concepts" in out_props:
            output["has_nsfw_concepts"] = [False] * count
        if "prompt" in out_props:
            output["prompt"] = prompt
        return output


def detail(violation: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """A jsonschema violation in fal's (pydantic-like) 422 `detail` shape."""
    loc: list[Any] = ["body"]
    for part in violation.json_path[2:].replace("]", "").replace("[", ".").split("."):
        if part:
            loc.append(int(part) if part.isdigit() else part)
    value: Any = payload
    for part in loc[1:]:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = None
            break
    kind = (
        "extra_forbidden"
        if "unknown property" in violation.message
        else ("missing" if "missing" in violation.message else "value_error")
    )
    if "greater than the maximum" in violation.message:
        kind = "less_than_equal"
    elif "less than the minimum" in violation.message:
        kind = "greater_than_equal"
    elif "not an allowed value" in violation.message:
        kind = "enum"
    return {"loc": loc, "msg": violation.message, "type": kind, "input": value}
