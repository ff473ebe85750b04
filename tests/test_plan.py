"""Planning: determinism, identity, portable aspect ratios, seeds, cost; properties by hypothesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from renderer.errors import ManifestError
from renderer.manifest.load import parse
from renderer.models.schemas import SchemaRegistry
from renderer.plan import cost as cost_mod
from renderer.plan import jobs as jobs_mod
from renderer.plan import planner as plan
from renderer.plan import seeds as seeds_mod

from .conftest import MANIFESTS, ROOT

MODELS = [
    "fal-ai/flux-1/schnell",
    "fal-ai/imagen4/preview",
    "fal-ai/hidream-i1-fast",
    "fal-ai/recraft/v2/text-to-image",
]


def build(registry: SchemaRegistry, data: dict[str, Any]) -> plan.Plan:
    text = yaml.safe_dump({"name": "t", **data}, sort_keys=False)
    return plan.build(parse(text, Path("m.yaml")), registry)


def by_identity(p: plan.Plan) -> dict[tuple[Any, ...], plan.Job]:
    return {(j.prompt_id, j.model, j.seed, tuple(sorted(j.axes.items()))): j for j in p.jobs}


def test_example_manifests_validate(registry: SchemaRegistry):
    """Every manifest under manifests/ plans without problems."""
    for path in sorted(MANIFESTS.glob("*.yaml")):
        p = plan.build(parse(path.read_text(), path), registry)
        assert p.jobs, path


def test_readme_manifest_examples_validate(registry: SchemaRegistry):
    """Every YAML manifest in the README, docs/manifest.md and docs/sweeps.md plans without problems
    (the files they name ship in manifests/)."""
    import re

    blocks = [
        block
        for name in ("README.md", "docs/manifest.md", "docs/sweeps.md")
        for block in re.findall(
            r"```yaml\n(.*?)```", (ROOT / name).read_text(encoding="utf-8"), re.S
        )
    ]
    assert len(blocks) >= 6
    for n, block in enumerate(blocks):
        p = plan.build(parse(block, MANIFESTS / f"README-block-{n}.yaml"), registry)
        assert p.jobs and not any(cost is None for cost in p.costs.values())


def test_portable_aspect_ratio_in_each_vocabulary(registry: SchemaRegistry):
    """16:9 is aspect_ratio for imagen4, a preset for flux, and 3:2 a size object for f-lite."""
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": ["fal-ai/imagen4/preview", "fal-ai/flux-1/schnell"],
            "defaults": {"aspect_ratio": "16:9"},
        },
    )
    assert p.jobs[0].input["aspect_ratio"] == "16:9"
    assert (
        p.jobs[1].input["image_size"] == "landscape_16_9" and "aspect_ratio" not in p.jobs[1].input
    )
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": ["fal-ai/f-lite/standard"],
            "defaults": {"aspect_ratio": "3:2"},
        },
    )
    assert p.jobs[0].input["image_size"] == {"width": 1248, "height": 832}


def test_ratio_a_model_cannot_express_names_it(registry: SchemaRegistry):
    """imagen4 has no 21:9: the error names the model and what it accepts."""
    with pytest.raises(ManifestError) as info:
        build(
            registry,
            {
                "prompts": [{"id": "a", "text": "x"}],
                "seeds": [1],
                "models": ["fal-ai/imagen4/preview"],
                "defaults": {"aspect_ratio": "21:9"},
            },
        )
    (problem,) = info.value.problems
    assert "fal-ai/imagen4/preview" in problem.message
    assert problem.allowed == "1:1, 16:9, 9:16, 3:4, 4:3"


def test_keys_are_versioned_and_canonical(registry: SchemaRegistry):
    """`5` and `5.0` name the same job; keys carry their version prefix."""
    a = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": ["fal-ai/hidream-i1-full"],
            "defaults": {"guidance_scale": 5},
        },
    )
    b = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": ["fal-ai/hidream-i1-full"],
            "defaults": {"guidance_scale": 5.0},
        },
    )
    assert a.jobs[0].key == b.jobs[0].key
    assert a.jobs[0].key.startswith("j1-") and len(a.jobs[0].key) == 43


def test_random_seeds_are_fixed_per_run_prompt_and_model(registry: SchemaRegistry):
    """`random: N` draws the same seeds on every plan, different ones for another run name."""
    data = {
        "prompts": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
        "seeds": {"random": 3},
        "models": ["fal-ai/flux-1/schnell"],
    }
    first = [j.seed for j in build(registry, data).jobs]
    assert first == [j.seed for j in build(registry, data).jobs]
    assert len(set(first)) == 6 and all(jobs_mod.SEED_MIN <= s <= jobs_mod.SEED_MAX for s in first)
    other = plan.build(parse(yaml.safe_dump({"name": "u", **data}), Path("m.yaml")), registry)
    assert [j.seed for j in other.jobs] != first


def test_model_without_seed_gets_sample_labels(registry: SchemaRegistry):
    """recraft takes no seed: none is sent, yet each seed is a distinct job, and a note says so."""
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1, 2],
            "models": ["fal-ai/recraft/v2/text-to-image"],
        },
    )
    assert all("seed" not in j.input for j in p.jobs)
    assert len({j.key for j in p.jobs}) == 2 and len({j.stem for j in p.jobs}) == 2
    assert p.notes and "takes no seed" in p.notes[0]


def test_cost_estimate_by_image_and_megapixel(registry: SchemaRegistry):
    """per_image multiplies images; per_megapixel uses each job's size."""
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1, 2],
            "models": ["fal-ai/imagen4/preview", "fal-ai/flux-1/schnell"],
            "defaults": {"num_images": 2},
            "prices": {
                "fal-ai/imagen4/preview": {"per_image": 0.05},
                "fal-ai/flux-1/schnell": {"per_megapixel": 0.01},
            },
        },
    )
    assert p.costs["fal-ai/imagen4/preview"] == pytest.approx(0.2)
    assert p.costs["fal-ai/flux-1/schnell"] == pytest.approx(2 * 2 * 0.01 * 1024 * 768 / 1e6)


def test_megapixel_estimate_prices_the_ratio_actually_produced(registry: SchemaRegistry):
    """A 16:9 request to an aspect_ratio model is 1024x576 = 0.59 MP (what image_cost bills), not 1.05."""
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": ["fal-ai/imagen4/preview"],
            "defaults": {"aspect_ratio": "16:9"},
            "prices": {"fal-ai/imagen4/preview": {"per_megapixel": 0.01}},
        },
    )
    job = p.jobs[0]
    assert job.input["aspect_ratio"] == "16:9"
    assert p.costs["fal-ai/imagen4/preview"] == pytest.approx(
        job.num_images * cost_mod.image_cost({"per_megapixel": 0.01}, 1024, 576)
    )


def test_unchecked_endpoint_passes_parameters_through(registry: SchemaRegistry):
    """An endpoint without a schema is allowed only with unchecked: true, and is sent as written."""
    p = build(
        registry,
        {
            "prompts": [{"id": "a", "text": "x"}],
            "seeds": [1],
            "models": [{"endpoint": "acme/new-model", "unchecked": True, "params": {"magic": 3}}],
        },
    )
    assert p.jobs[0].input == {"magic": 3, "prompt": "x", "seed": 1}


# ---------------------------------------------------------------- properties

ids = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
manifests = st.fixed_dictionaries(
    {
        "prompts": st.lists(ids, min_size=1, max_size=4, unique_by=str.lower).map(
            lambda xs: [{"id": x, "text": f"a picture of {x}"} for x in xs]
        ),
        "models": st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
        "seeds": st.one_of(
            st.lists(st.integers(1, 10**6), min_size=1, max_size=3, unique=True),
            st.builds(lambda n: {"random": n}, st.integers(1, 3)),
        ),
        "axes": st.sampled_from([{}, {"aspect_ratio": ["1:1", "16:9"]}, {"aspect_ratio": ["3:4"]}]),
    }
)
slow = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(manifests)
def test_expansion_is_deterministic(registry, data):
    """The same manifest always gives the same jobs, in the same order."""
    a, b = build(registry, data), build(registry, data)
    assert [(j.key, j.stem, j.input) for j in a.jobs] == [(j.key, j.stem, j.input) for j in b.jobs]


@slow
@given(manifests)
def test_output_paths_and_keys_are_unique(registry, data):
    """No two jobs share an output path (ignoring case) or a key."""
    p = build(registry, data)
    assert len({j.stem.lower() for j in p.jobs}) == len(p.jobs)
    assert len({j.key for j in p.jobs}) == len(p.jobs)


@slow
@given(manifests, ids, st.integers(0, 4))
def test_adding_a_prompt_changes_no_other_job(registry, data, new_id, position):
    """Inserting a prompt anywhere leaves every existing job's key and path as they were."""
    if any(p["id"].lower() == new_id.lower() for p in data["prompts"]):
        return
    before = by_identity(build(registry, data))
    prompts = list(data["prompts"])
    prompts.insert(min(position, len(prompts)), {"id": new_id, "text": f"new {new_id}"})
    after = by_identity(build(registry, {**data, "prompts": prompts}))
    for ident, job in before.items():
        assert (after[ident].key, after[ident].stem) == (job.key, job.stem)


@slow
@given(manifests)
def test_reordering_models_keeps_identity(registry, data):
    """Reversing the model list changes plan order only, never a key or a path."""
    before = by_identity(build(registry, data))
    after = by_identity(build(registry, {**data, "models": list(reversed(data["models"]))}))
    assert {k: (j.key, j.stem) for k, j in before.items()} == {
        k: (j.key, j.stem) for k, j in after.items()
    }


def test_jobs_are_made_on_demand_and_behave_as_a_sequence(registry: SchemaRegistry):
    """plan.jobs has len(), indexing and slicing, and gives the same jobs on every iteration."""
    p = build(
        registry,
        {
            "prompts": [{"id": f"p{i}", "text": f"t{i}"} for i in range(3)],
            "models": MODELS[:2],
            "seeds": {"start": 1, "count": 4},
        },
    )
    first = list(p.jobs)
    assert isinstance(p.jobs, plan.Jobs) and len(p.jobs) == len(first) == 24
    assert [j.index for j in first] == list(range(24))
    assert list(p.jobs) == first and p.jobs[5] == first[5] and p.jobs[-1] == first[-1]
    assert p.jobs[2:9:3] == first[2:9:3] and p.jobs[::-1] == first[::-1]
    assert p.images == 24 and p.by_model == {MODELS[0]: (12, 12), MODELS[1]: (12, 12)}
    with pytest.raises(IndexError):
        p.jobs[24]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from(["a", "b", "A", "same"]), min_size=1, max_size=4),
    st.lists(st.integers(1, 5), min_size=1, max_size=4, unique=True),
)
def test_seed_template_jobs_equal_jobs_made_one_by_one(registry: SchemaRegistry, texts, seeds):
    """The fast per-seed path gives each job the key, stem and input the long way gives it."""
    data = {
        "prompts": [{"id": f"p{i}", "text": t} for i, t in enumerate(texts)],
        "models": MODELS[:3],
        "seeds": seeds,
        "defaults": {"aspect_ratio": "16:9"},
    }
    try:
        p = build(registry, data)
    except ManifestError:  # repeated texts are refused
        assert len(set(texts)) < len(texts)
        return
    assert len(set(texts)) == len(texts)
    planner = plan.Planner(p.manifest, registry)
    planner.build()
    for job in p.jobs:
        prompt = planner.prompts[job.prompt_id]
        model = planner.models[job.model]
        slow = planner._full(job.index, prompt, model, job.axes, {}, None, job.seed, check=True)
        assert slow == job


def test_plan_digest_follows_what_the_state_records(registry: SchemaRegistry):
    """The digest changes when a job's key, order, model or tags change, not otherwise."""
    data = {
        "prompts": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
        "models": MODELS[:1],
        "seeds": [1, 2],
    }
    base = build(registry, data).digest
    assert build(registry, data).digest == base
    assert build(registry, {**data, "seeds": [2, 1]}).digest != base
    assert (
        build(
            registry,
            {
                **data,
                "prompts": [{"id": "a", "text": "x", "tags": ["t"]}, {"id": "b", "text": "y"}],
            },
        ).digest
        != base
    )


def test_the_same_input_twice_is_named_with_both_jobs(registry: SchemaRegistry):
    """Two labels of one endpoint send identical inputs: found by fingerprint, then named exactly."""
    with pytest.raises(ManifestError) as info:
        build(
            registry,
            {
                "prompts": [{"id": "a", "text": "x"}],
                "seeds": {"start": 1, "count": 50},
                "models": [
                    {"endpoint": MODELS[0], "label": "one"},
                    {"endpoint": MODELS[0], "label": "two"},
                ],
            },
        )
    problems = info.value.problems
    assert len(problems) == 50 and all("it would be paid twice" in p.message for p in problems)
    assert [p.message.split(" sends")[0] for p in problems] == [
        f"prompt=a model=two seed={s}" for s in range(1, 51)
    ]
    assert all(
        f"model=one seed={s};" in p.message for s, p in zip(range(1, 51), problems, strict=True)
    )


# ---------------------------------------------------------------- the fast path against the straightforward way


class _Straightforward(plan.Planner):
    """The reference planner: no shortcuts, every job made, checked and compared one by one."""

    shortcuts = False


def _plan_both(registry: SchemaRegistry, data: dict[str, Any]) -> tuple[Any, Any]:
    """(fast, straightforward): a Plan, or the problems both would raise, for one manifest."""
    try:
        m = parse(yaml.safe_dump({"name": "t", **data}, sort_keys=False), Path("m.yaml"))
    except ManifestError:
        return None, None
    out = []
    for planner in (plan.Planner, _Straightforward):
        try:
            out.append(planner(m, registry).build())
        except ManifestError as exc:
            out.append(
                [
                    (p.file, p.line, p.col, p.json_path, p.message, p.job, p.allowed, p.suggestion)
                    for p in exc.problems
                ]
            )
    return out[0], out[1]


def _described(p: plan.Plan) -> dict[str, Any]:
    """Everything a plan says, but its digest (whose form depends on how the plan was checked)."""
    return {
        "jobs": list(p.jobs),
        "by_model": p.by_model,
        "images": p.images,
        "costs": p.costs,
        "axes": p.distinct_axes,
        "notes": p.notes,
        "count": len(p.jobs),
    }


def _recorded(p: plan.Plan) -> list[tuple[Any, ...]]:
    """What the digest stands for: each job's key, model, source and tags, in order."""
    return [(j.key, j.model, j.where, j.tags) for j in p.jobs]


@st.composite
def tricky_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Small manifests that reach every branch: repeats, clashes, bad values, include/exclude/extra."""
    rare = st.sampled_from([False] * 5 + [True])  # most examples plan; some go wrong on purpose
    ids = draw(
        st.lists(
            st.sampled_from(["a", "b", "con", "p1", "p.1"]), min_size=1, max_size=4, unique=True
        )
    )
    if draw(rare):
        ids.append(ids[0].upper())
    prompts = []
    for i, pid in enumerate(ids):
        prompt: dict[str, Any] = {"id": pid, "text": f"picture {i}"}
        if draw(rare):
            prompt["params"] = draw(
                st.sampled_from([{"num_images": 2}, {"guidance_scale": 99}, {"nonsense": 1}])
            )
        if draw(st.booleans()):
            prompt["tags"] = ["t"]
        prompts.append(prompt)
    models = draw(
        st.lists(
            st.sampled_from(
                [
                    MODELS[0],
                    MODELS[1],
                    MODELS[3],
                    "fal-ai/f-lite/standard",
                    {"endpoint": MODELS[0], "label": "one"},
                    {"endpoint": MODELS[0], "label": "two"},
                    {
                        "endpoint": MODELS[1],
                        "label": "fal-ai--flux-1--schnell",
                    },  # the path segment of MODELS[0]
                    {"endpoint": "acme/new-model", "unchecked": True},
                    {
                        "endpoint": MODELS[1],
                        "label": "wide",
                        "axes": {"aspect_ratio": ["16:9", "9:16"]},
                    },
                ]
            ),
            min_size=1,
            max_size=3,
            unique_by=str,
        )
    )
    if draw(rare):
        models.append(models[0])
    data: dict[str, Any] = {
        "prompts": prompts,
        "models": models,
        "seeds": draw(
            st.one_of(
                st.lists(st.sampled_from([1, 2, 3, 7]), min_size=1, max_size=4, unique=True).map(
                    lambda xs: xs + draw(st.sampled_from([[], [], [], [], [0], [2**31], xs[:1]]))
                ),
                st.builds(
                    lambda start, count: {"start": start, "count": count},
                    st.sampled_from([1, 5, 2**31 - 2]),
                    st.integers(1, 4),
                ),
                st.builds(lambda n: {"random": n}, st.integers(1, 3)),
            )
        ),
    }
    names = [m if isinstance(m, str) else m.get("label", m["endpoint"]) for m in models]
    optional = {
        "axes": st.sampled_from(
            [{"aspect_ratio": ["1:1", "16:9"]}, {"aspect_ratio": ["21:9", "1:1"]}]
        ),
        "defaults": st.sampled_from(
            [{"num_images": 2}, {"aspect_ratio": "4:3"}, {"output_format": "jpeg"}]
        ),
        "include": st.sampled_from(
            [
                [{"prompt": ids[0], "model": names[0], "seed": 9}],
                [{"num_images": 2}],
                [{"model": names[-1], "num_images": 3}],
            ]
        ),
        "exclude": st.sampled_from([[{"seed": 2}], [{"prompt": ids[-1]}]]),
        "extra": st.sampled_from(
            [
                [{"prompt": ids[0], "model": names[0], "seed": 1}],
                [{"prompt": ids[-1], "model": names[-1], "seed": 4}],
            ]
        ),
        "prices": st.sampled_from(
            [{names[0]: {"per_megapixel": 0.003}}, {names[-1]: {"per_image": 0.04}}]
        ),
    }
    for key, values in optional.items():
        if draw(st.integers(0, 3)) == 0:
            data[key] = draw(values)
    return data


@pytest.fixture(scope="module")
def seed_limited(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    """The shipped schemas, but flux's seed has a maximum of 5: its seeds are checked value by value."""
    import json
    import shutil

    from .conftest import SCHEMAS

    root = tmp_path_factory.mktemp("schemas") / "s"
    shutil.copytree(SCHEMAS, root)
    path = root / "endpoints" / f"{MODELS[0]}.json"
    schema = json.loads(path.read_text())
    schema["properties"]["seed"]["maximum"] = 5
    path.write_text(json.dumps(schema))
    return SchemaRegistry(root)


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tricky_manifests(), st.booleans())
def test_fast_plan_equals_the_straightforward_plan(
    registry: SchemaRegistry, seed_limited: SchemaRegistry, data: dict[str, Any], limited: bool
):
    """Cells taken whole, seed templates and counted samples give the plan (or the problems) of the long way."""
    fast, slow = _plan_both(seed_limited if limited else registry, data)
    if isinstance(fast, plan.Plan) and isinstance(slow, plan.Plan):
        assert _described(fast) == _described(slow)
        jobs = list(fast.jobs)
        assert [fast.jobs[i] for i in range(len(jobs))] == jobs  # located by counting, not walking
        assert list(jobs_mod.job_keys(fast.jobs)) == [(j.key, j.model) for j in jobs]
    else:
        assert fast == slow


def test_problems_of_the_manifest_survive_the_exact_pass(registry: SchemaRegistry):
    """A seed out of range is still reported when repeated inputs make the planner re-run its pass exactly."""
    with pytest.raises(ManifestError) as info:
        build(
            registry,
            {
                "prompts": [{"id": "a", "text": "x"}],
                "seeds": [1, 0],
                "models": [
                    {"endpoint": MODELS[0], "label": "one"},
                    {"endpoint": MODELS[0], "label": "two"},
                ],
            },
        )
    messages = sorted(p.message for p in info.value.problems)
    assert len(messages) == 2 and messages[1] == "seed 0 is out of range"
    assert messages[0].startswith(
        "prompt=a model=two seed=1 sends exactly the input of prompt=a model=one seed=1"
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**70), 2**70), max_size=200),
    st.lists(st.integers(-(2**70), 2**70), max_size=50),
    st.sampled_from([0, 5, 50_000]),
)
def test_fingerprints_hold_the_low_64_bits_of_each_member(
    members: list[int], probes: list[int], small: int
):
    """Membership is that of a set of the members' low 64 bits, before and after the set moves into buckets."""
    mask = 2**64 - 1
    fps = plan.Fingerprints()
    fps.SMALL = small
    for m in members:
        fps.add(m)
    expected = {m & mask for m in members}
    for x in members + probes + [m ^ (1 << 64) for m in members]:
        assert (x in fps) == ((x & mask) in expected)


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=5), st.text(max_size=5), st.text(max_size=5), st.integers(0, 40))
def test_a_cells_random_seeds_are_random_seed_for_each_sample(
    run: str, prompt_id: str, model: str, count: int
):
    """The seeds drawn for a cell at once are exactly random_seed(run, prompt, model, n) for n < count."""
    seeds = seeds_mod.RandomSeeds(run, prompt_id, model, count)
    assert len(seeds) == count
    assert list(seeds) == [jobs_mod.random_seed(run, prompt_id, model, n) for n in range(count)]


def _variants(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest with one thing changed that may change its jobs (or, for some, not)."""
    first = dict(data["prompts"][0])
    out = [
        {**data, "prompts": [{**first, "tags": ["new"]}, *data["prompts"][1:]]},
        {**data, "prompts": [{**first, "text": first["text"] + "!"}, *data["prompts"][1:]]},
        {**data, "models": list(reversed(data["models"]))},
        {
            **data,
            "extra": [
                {
                    "prompt": first["id"],
                    "model": data["models"][0]
                    if isinstance(data["models"][0], str)
                    else data["models"][0].get("label", data["models"][0]["endpoint"]),
                    "seed": 11,
                }
            ],
        },
        {**data, "prompts": list(reversed(data["prompts"]))},
    ]
    if isinstance(data["seeds"], list):
        out.append({**data, "seeds": list(reversed(data["seeds"]))})
    elif "count" in data["seeds"]:
        out.append({**data, "seeds": {**data["seeds"], "count": data["seeds"]["count"] + 1}})
    return out


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tricky_manifests())
def test_the_digest_tells_apart_any_two_different_plans(
    registry: SchemaRegistry, data: dict[str, Any]
):
    """The same manifest gives the same digest; a change to any job's key, model, source, tags or order changes it."""
    base, _ = _plan_both(registry, data)
    if not isinstance(base, plan.Plan):
        return
    again, _ = _plan_both(registry, data)
    assert isinstance(again, plan.Plan) and again.digest == base.digest
    for variant in _variants(data):
        other, _ = _plan_both(registry, variant)
        if isinstance(other, plan.Plan) and _recorded(other) != _recorded(base):
            assert other.digest != base.digest


@pytest.fixture(scope="module")
def prompt_limited(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    """The shipped schemas, but flux's prompt has a maxLength of 12 and a pattern: texts are tested one by one."""
    import json
    import shutil

    from .conftest import SCHEMAS

    root = tmp_path_factory.mktemp("schemas") / "s"
    shutil.copytree(SCHEMAS, root)
    path = root / "endpoints" / f"{MODELS[0]}.json"
    schema = json.loads(path.read_text())
    schema["properties"]["prompt"].update({"maxLength": 12, "pattern": "^[^!]*$"})
    path.write_text(json.dumps(schema))
    return SchemaRegistry(root)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=16)
        | st.sampled_from(
            [
                'say "hi"',
                "back\\slash",
                "tab\tbed",
                "ünï cödé ✓",
                "bang!",
                "twelve chars",
                "thirteen char",
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    models=st.lists(
        st.sampled_from(
            [*MODELS[:3], {"endpoint": MODELS[1], "label": "fal-ai--flux-1--schnell"}]
        ),  # the last one's images would share MODELS[0]'s folder
        min_size=1,
        max_size=2,
        unique_by=str,
    ),
    seeds=st.sampled_from([[1], [3, 1], {"random": 2}]),
    axes=st.sampled_from([{}, {"aspect_ratio": ["1:1", "16:9"]}]),
    layout=st.sampled_from(["flat", "sharded"]),
    limited=st.booleans(),
    ids=st.sampled_from(["derived", "given", "odd"]),
    keep=st.booleans(),
)
@example(  # past the first row, texts over the limit and against the pattern
    texts=["twelve chars", "thirteen char", "bang!", "ok"],
    models=[MODELS[0]],
    seeds=[1],
    axes={},
    layout="sharded",
    limited=True,
    ids="given",
    keep=False,
)
@example(  # two models whose images share one folder
    texts=["one", "two"],
    models=[MODELS[0], {"endpoint": MODELS[1], "label": "fal-ai--flux-1--schnell"}],
    seeds=[1],
    axes={},
    layout="sharded",
    limited=False,
    ids="derived",
    keep=False,
)
@example(  # ids that are not their own path segment: "a-" and "a" share one folder
    texts=["one", "two", "three"],
    models=[MODELS[0]],
    seeds=[1],
    axes={},
    layout="flat",
    limited=False,
    ids="odd",
    keep=False,
)
@example(  # kept values on a caption set the column pass proves clean
    texts=["one", "two", "three", "four", "five", "six"],
    models=[MODELS[0], MODELS[2]],
    seeds=[1],
    axes={"aspect_ratio": ["1:1", "16:9"]},
    layout="flat",
    limited=False,
    ids="derived",
    keep=True,
)
def test_caption_jobs_equal_jobs_made_one_by_one(
    tmp_path: Path,
    registry: SchemaRegistry,
    prompt_limited: SchemaRegistry,
    texts,
    models,
    seeds,
    axes,
    layout,
    limited,
    ids,
    keep,
):
    """A prompt file's rows, made by splicing each text into its column, give the jobs (or problems)
    of the long way, each with its own row's kept values, and the digest of the pass that checks
    every job."""
    import json

    odd = ["a-", "a", "con", "A.", "b"]  # segments a, a, _con, A, b
    src = [7, "a,b", None, 2.5, True, "\u00e9\u001f"]  # kept values; every 7th row lacks the key
    rows = [
        {"text": t, **({"id": f"Row.{i}_X"} if ids == "given" else {})}
        | ({"id": odd[i % len(odd)]} if ids == "odd" else {})
        | ({"src": src[i % len(src)]} if keep and i % 7 != 6 else {})
        for i, t in enumerate(texts)
    ]
    if keep and all("src" not in row for row in rows):
        rows[0]["src"] = "x"  # a kept key no row has is refused as a misspelling
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    data = {
        "name": "t",
        "layout": layout,
        "prompts": [{"file": "p.jsonl", **({"keep": ["src"]} if keep else {})}],
        "models": models,
        "seeds": seeds,
        "axes": axes,
    }
    try:
        m = parse(yaml.safe_dump(data, sort_keys=False), tmp_path / "m.yaml")
    except ManifestError:  # a text repeated, or only whitespace
        return
    out, digests = [], []
    for planner in (plan.Planner, _Straightforward, _EveryJob):
        try:
            made = planner(m, prompt_limited if limited else registry).build()
            jobs = list(made.jobs)
            assert [made.jobs[i] for i in range(len(jobs))] == jobs  # located, not walked
            out.append(_described(made))
            digests.append(made.digest)
        except ManifestError as exc:
            out.append([(p.file, p.line, p.message, p.job) for p in exc.problems])
    assert out[0] == out[1] == out[2]
    assert digests[0:1] == digests[2:3]
    if keep and digests:  # each job carries its own row's values
        by_id = {p.id: {"src": row.get("src")} for p, row in zip(m.prompts, rows, strict=True)}
        assert all(json.loads(j.extra) == by_id[j.prompt_id] for j in made.jobs)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    values=st.lists(st.none() | st.integers(-3, 3) | st.text(max_size=4), min_size=5, max_size=5),
    models=st.lists(st.sampled_from(MODELS[:3]), min_size=1, max_size=2, unique=True),
    seeds=st.sampled_from([[1], [3, 1], {"random": 2}, {"start": 1, "count": 3}]),
    axes=st.sampled_from([{}, {"aspect_ratio": ["1:1", "16:9"]}]),
    layout=st.sampled_from(["flat", "sharded"]),
    fmt=st.sampled_from(["jsonl", "csv"]),
)
def test_keep_changes_no_key_or_path_and_the_digest_follows_the_values(
    tmp_path: Path, registry: SchemaRegistry, texts, values, models, seeds, axes, layout, fmt
):
    """Adding `keep:` never changes a job's key, path, input or place; each job carries its prompt's
    values; changing a kept value changes the plan's digest and nothing else."""
    import csv
    import json

    def plan_of(keep: bool, change: int | None = None) -> plan.Plan:
        folder = tmp_path  # one folder: `where` (file:line) is part of the digest
        rows = [
            {"text": t, "src": values[i] if i != change else "changed"} for i, t in enumerate(texts)
        ]
        if fmt == "jsonl":
            (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            with (folder / "p.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, ["text", "src"])
                writer.writeheader()
                writer.writerows(rows)
        entry: dict[str, Any] = {"file": f"p.{fmt}", "text": "text"}
        if keep:
            entry["keep"] = ["src"]
        data = {"name": "t", "layout": layout, "prompts": [entry], "models": models}
        text = yaml.safe_dump({**data, "seeds": seeds, "axes": axes}, sort_keys=False)
        try:
            return plan.build(parse(text, folder / "m.yaml"), registry)
        except ManifestError:  # a text only whitespace, or two texts the same once stripped
            reject()

    def shape(p: plan.Plan) -> list[tuple[Any, ...]]:
        return [(j.index, j.key, j.stem, j.paths(), j.input, j.prompt_id, j.where) for j in p.jobs]

    without, kept = plan_of(False), plan_of(True)
    assert shape(kept) == shape(without)
    assert all(j.extra is None for j in without.jobs)
    # every job carries exactly its prompt's kept values
    expected = {p.id: p.extra for p in kept.manifest.prompts}
    assert [j.extra for j in kept.jobs] == [expected[j.prompt_id] for j in kept.jobs]
    assert all(j.extra is not None for j in kept.jobs)
    assert [kept.jobs[i] for i in range(len(kept.jobs))] == list(kept.jobs)  # located, not walked
    assert kept.digest != without.digest
    changed = plan_of(True, change=len(texts) - 1)
    assert shape(changed) == shape(kept)
    assert (changed.digest == kept.digest) == (
        [j.extra for j in changed.jobs] == [j.extra for j in kept.jobs]
    )
    straight = _Straightforward(kept.manifest, registry).build()
    assert list(straight.jobs) == list(kept.jobs)  # the shortcuts carry the values too


@pytest.mark.parametrize("suffix", [".txt", ".parquet", "keep"])
def test_a_caption_set_read_again_from_its_file_plans_as_one_held(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch, suffix: str
):
    """Captions whose texts (and kept values) are read again from the file (a large file) give the jobs, kept values and digest of captions held in memory."""
    import json

    from renderer.manifest import backed
    from renderer.manifest.kept import kept_kinds

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"caption {i}" + (" é" if i % 7 == 0 else "") for i in range(9000)]
    texts[5] = "#5 hashtag"  # a comment line in .txt, a caption in .parquet
    if suffix == ".txt":
        (tmp_path / "c.txt").write_text(
            "".join(t + "\n" + ("\n" if i % 3 else "") for i, t in enumerate(texts))
        )
        entry: dict[str, Any] = {"file": "c.txt"}
    else:
        columns = {
            "caption": texts,
            "src": [None if i % 5 == 0 else f"https://x/{i}" for i in range(9000)],
            "n": list(range(9000)),
        }
        # With keep, batches of 5,000 (checked at once by pyarrow) and a last one of 4,000.
        size = 5000 if suffix == "keep" else 2000
        pq.write_table(pa.table(columns), tmp_path / "c.parquet", row_group_size=size)
        entry = {"file": "c.parquet", "text": "caption"}
        if suffix == "keep":
            entry["keep"] = ["src", "n"]
    data = {"name": "t", "prompts": [entry], "models": MODELS[:2], "seeds": [1]}
    made = []
    for limit in (backed.BACKED_BYTES, -1):
        monkeypatch.setattr(backed, "BACKED_BYTES", limit)
        m = parse(yaml.safe_dump(data, sort_keys=False), tmp_path / "m.yaml")
        p = plan.Planner(m, registry).build()
        full = _EveryJob(m, registry).build()  # the digest of the pass that checks every job
        assert p.digest == full.digest and list(p.jobs) == list(full.jobs)
        made.append(
            (list(p.jobs), p.digest, p.jobs[len(p.jobs) - 3], p.jobs[4001], kept_kinds(m.prompts))
        )
        (table,) = m.prompts.parts
        if limit < 0:  # read again: the table holds no text and no kept values (as large)
            assert len(table._texts) == len(table._extras) == 0
        else:
            assert len(table._texts) > 0 and (len(table._extras) > 0) == (suffix == "keep")
    assert made[0] == made[1] and len(made[0][0]) == 2 * (9000 - (suffix == ".txt"))
    if suffix == "keep":
        assert made[0][4] == {"src": {"string"}, "n": {"int64"}}
        for job in made[0][0]:
            row = int(job.where.rsplit(":", 1)[1]) - 1
            assert json.loads(job.extra or "") == {"src": columns["src"][row], "n": row}
    else:
        assert all(job.extra is None for job in made[0][0])


def test_an_inline_id_equal_to_a_derived_one_is_a_repeated_id(
    tmp_path: Path, registry: SchemaRegistry
):
    """An inline prompt named like a caption's derived id (in other case) is reported as a repeated id, whichever way it is checked."""
    from renderer.manifest.table import text_id

    (tmp_path / "p.txt").write_text("a red fox at dawn\nan owl\n")
    data = {
        "name": "t",
        "prompts": [{"id": text_id("an owl").upper(), "text": "x"}, {"file": "p.txt"}],
        "models": MODELS[:1],
        "seeds": [1],
    }
    m = parse(yaml.safe_dump(data, sort_keys=False), tmp_path / "m.yaml")
    problems = []
    for planner in (plan.Planner, _Straightforward):
        with pytest.raises(ManifestError) as info:
            planner(m, registry).build()
        problems.append([(p.line, p.message) for p in info.value.problems])
    assert problems[0] == problems[1] and len(problems[0]) == 1
    assert problems[0][0][0] == 2 and "duplicate prompt id" in problems[0][0][1]


def test_repeated_texts_are_found_by_the_full_pass(tmp_path: Path, registry: SchemaRegistry):
    """Two prompts with one text (a manifest made without the load's check) are named as paid twice, not planned."""
    from dataclasses import replace

    from renderer.manifest.table import Prompts, PromptTable

    (tmp_path / "p.txt").write_text("one\ntwo\n")
    data = {"name": "t", "prompts": [{"file": "p.txt"}], "models": MODELS[:1], "seeds": [1]}
    m = parse(yaml.safe_dump(data, sort_keys=False), tmp_path / "m.yaml")
    table = PromptTable(str(tmp_path / "p.txt"), ("prompts", 0, "file"))
    table.add(1, "one", "same text")
    table.add(2, "two", "same text")
    m = replace(m, prompts=Prompts([table]))
    problems = []
    for planner in (plan.Planner, _Straightforward):
        with pytest.raises(ManifestError) as info:
            planner(m, registry).build()
        problems.append([p.message for p in info.value.problems])
    assert problems[0] == problems[1] and "it would be paid twice" in problems[0][0]


class _EveryJob(plan.Planner):
    """The planner with its shortcuts but without the caption set's column pass: every job checked."""

    def _column_pass(self) -> None:
        return None


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_caption_set_is_checked_by_its_columns(
    tmp_path: Path, registry: SchemaRegistry, suffix: str
):
    """A prompt file of captions on two models, with kept columns or not, is planned without a pass over its jobs, to the same plan and digest."""
    import json

    texts = [f"caption number {i}" for i in range(50)]
    entry: dict[str, Any] = {"file": f"p{suffix}"}
    if suffix == ".txt":
        (tmp_path / "p.txt").write_text("".join(f"{t}\n" for t in texts))
    elif suffix == ".jsonl":
        rows = [{"caption": t, "url": f"u{i}", "n": i} for i, t in enumerate(texts)]
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        entry |= {"text": "caption", "keep": ["url", "n"]}
    else:
        (tmp_path / "p.csv").write_text(
            "text,url\n" + "".join(f"{t},u{i}\n" for i, t in enumerate(texts))
        )
        entry |= {"keep": ["url"]}
    data = {
        "name": "t",
        "prompts": [{"id": "first", "text": "an inline one"}, entry],
        "models": MODELS[:2],
        "seeds": [7],
        "axes": {"aspect_ratio": ["1:1", "16:9"]},
        "prices": {MODELS[0]: {"per_megapixel": 0.003}, MODELS[1]: {"per_image": 0.04}},
    }
    m = parse(yaml.safe_dump(data, sort_keys=False), tmp_path / "m.yaml")
    quick, full = plan.Planner(m, registry).build(), _EveryJob(m, registry).build()
    later = quick.digest_later()
    assert callable(later) and isinstance(full.digest_source, str)  # nothing made yet
    assert _described(quick) == _described(full) and later() == full.digest
    assert quick.digest == quick.digest_later() == full.digest and len(quick.jobs) == 51 * 4
    if suffix != ".txt":  # each job carries its own row's values (none for the inline prompt)
        assert [j.extra for j in quick.jobs][:4] == [None] * 4
        assert all(
            json.loads(j.extra or "")["url"] == f"u{j.index // 4 - 1}" for j in quick.jobs[4:]
        )
