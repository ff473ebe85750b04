"""A cell's values into an endpoint's own vocabulary (the portable aspect_ratio as the model takes
it) and the check of a payload against the endpoint's schema.
"""

from __future__ import annotations

from typing import Any

from renderer.manifest.types import Model
from renderer.plan.checks import PlanChecks
from renderer.plan.cost import RATIO_PRESET, ratio_size


class Translation(PlanChecks):
    """A cell's values into an endpoint's own vocabulary (the portable aspect_ratio as the model takes"""

    def translate_ratio(
        self, model: Model, payload: dict[str, Any], origin: tuple[Any, ...], job: str
    ) -> None:
        """Give the portable `aspect_ratio` to a model in its own vocabulary."""
        if model.unchecked or "aspect_ratio" not in payload:
            return
        props = self.props(model)
        if "aspect_ratio" in props:
            return
        ratio = payload.pop("aspect_ratio")
        if not isinstance(ratio, str):
            self._translate(model, props, payload, ratio, origin, job)
            return
        memo = (model.endpoint, ratio, "image_size" in payload)
        if memo in self._ratio:
            result = self._ratio[memo]
            if result is not None:
                payload[result[0]] = result[1]
                return
        # Counted, not len(self.problems): a repeated problem is folded into an existing entry.
        before = sum(self.counts.values())
        self._translate(model, props, payload, ratio, origin, job)
        ok = sum(self.counts.values()) == before
        self._ratio[memo] = ("image_size", payload["image_size"]) if ok else None

    def _translate(
        self,
        model: Model,
        props: dict[str, Any],
        payload: dict[str, Any],
        ratio: Any,
        origin: tuple[Any, ...],
        job: str,
    ) -> None:
        size = props.get("image_size")
        if (
            not isinstance(ratio, str)
            or not all(p.isdigit() and int(p) > 0 for p in ratio.split(":"))
            or ratio.count(":") != 1
        ):
            self.at(origin, f"aspect_ratio {ratio!r} is not a ratio like 16:9", job=job)
            return
        if size is None:
            self.at(
                origin,
                f"{model.endpoint} cannot take an aspect ratio: it has neither aspect_ratio nor image_size",
                job=job,
            )
            return
        if "image_size" in payload:
            self.at(
                origin,
                f"both aspect_ratio and image_size are set for {model.endpoint}; keep one",
                job=job,
            )
            return
        presets: list[Any] = next(
            (b.get("enum", []) for b in size.get("anyOf", [size]) if "enum" in b), []
        )
        takes_object = any(
            b.get("$ref") or b.get("type") == "object" for b in size.get("anyOf", [size])
        )
        preset = RATIO_PRESET.get(ratio)
        if preset in presets:
            payload["image_size"] = preset
        elif takes_object:
            payload["image_size"] = ratio_size(ratio)
        else:
            self.at(
                origin,
                f"{model.endpoint} cannot express aspect ratio {ratio}",
                job=job,
                allowed="image_size presets: " + ", ".join(presets),
            )

    def validate(
        self,
        model: Model,
        payload: dict[str, Any],
        layers: list[tuple[tuple[Any, ...], dict[str, Any]]],
        job: Any,
        shape: tuple[Any, ...],
    ) -> bool:
        """Check a job's input; each distinct shape, prompt and seed is validated once.

        `shape` identifies everything but prompt and seed (the layers the input was built
        from), so 100,000 jobs over a handful of shapes cost a handful of validations.
        """
        if model.unchecked:
            return True
        prompt = payload.get("prompt")
        checks: list[tuple[tuple[Any, ...], Any, Any]] = [
            (
                ("shape", *shape),
                lambda: {
                    **{k: v for k, v in payload.items() if k not in ("prompt", "seed")},
                    "prompt": "x",
                },
                "rest",
            ),
        ]
        if not (isinstance(prompt, str) and self._plain_string_prompt(model)):
            checks.append((("prompt", prompt), lambda: {"prompt": prompt}, "$.prompt"))
        if "seed" in payload:
            seed = payload["seed"]
            checks.append(
                (
                    self._seed_check_key(model, seed)[1:],
                    lambda: {"prompt": "x", "seed": seed},
                    "$.seed",
                )
            )
        ok = True
        for cache_key, body, part in checks:
            key = (model.endpoint, *cache_key)
            if key not in self._checked:
                found = self.registry.check(model.endpoint, body())
                self._checked[key] = [
                    v
                    for v in found
                    if (
                        v.json_path.startswith(part)
                        if part != "rest"
                        else v.json_path != "$.prompt"
                    )
                ]
            if self._checked[key] and not isinstance(job, str):
                job = str(job)
            for v in self._checked[key]:
                ok = False
                top = v.json_path[2:].replace("[", ".").split(".")[0]
                origin = next(
                    ((*path, top) for path, params in reversed(layers) if top in params), None
                )
                if origin is None:
                    origin = ("models", self.m.models.index(model))
                self.at(
                    origin,
                    f"{model.endpoint}: {v.json_path}: {v.message}",
                    job=job,
                    allowed=v.allowed,
                    suggestion=v.suggestion,
                )
        return ok
