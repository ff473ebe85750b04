"""The emulator speaks fal's queue protocol over real sockets, with every fault observable."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from renderer.models.read import parse_file
from renderer.models.schemas import SchemaRegistry
from renderer.provider.emulator import Emulator, EmulatorConfig, Faults, ServiceTime

from .conftest import DOCS, ROOT, self_signed

Scenario = Callable[[Emulator, aiohttp.ClientSession], Awaitable[Any]]
FAST = ServiceTime("fixed", 0.01)


def run(scenario: Scenario, **config: Any) -> Any:
    config.setdefault("service", FAST)

    async def main() -> Any:
        async with Emulator(EmulatorConfig(**config)) as emu, aiohttp.ClientSession() as http:
            return await scenario(emu, http)

    return asyncio.run(main())


async def submit(
    emu: Emulator, http: aiohttp.ClientSession, endpoint: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{emu.url}/{endpoint}", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def wait_done(
    http: aiohttp.ClientSession,
    handle: dict[str, Any],
    limit: float = 5.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        async with http.get(handle["status_url"], headers=headers) as r:
            body = await r.json()
        if body["status"] == "COMPLETED":
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.01)


async def result(http: aiohttp.ClientSession, handle: dict[str, Any]) -> tuple[int, Any]:
    async with http.get(handle["response_url"]) as r:
        return r.status, await r.json()


async def download(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as r:
        assert r.status == 200
        return await r.read()


def test_submit_returns_app_level_absolute_urls():
    """A sub-path endpoint's URLs name only owner/app, absolutely, with x-fal-request-id."""

    async def scenario(emu, http):
        async with http.post(f"{emu.url}/fal-ai/imagen4/preview/ultra", json={"prompt": "x"}) as r:
            body = await r.json()
            assert r.headers["x-fal-request-id"] == body["request_id"]
        rid = body["request_id"]
        assert body["status_url"] == f"{emu.url}/fal-ai/imagen4/requests/{rid}/status"
        assert body["response_url"] == f"{emu.url}/fal-ai/imagen4/requests/{rid}"
        assert body["cancel_url"] == f"{emu.url}/fal-ai/imagen4/requests/{rid}/cancel"
        assert body["queue_position"] == 0

    run(scenario)


def test_status_codes_positions_and_logs():
    """202 while queued (with position) or in progress (with logs), 200 when completed (with metrics)."""

    async def scenario(emu, http):
        handles = [
            await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": f"p{i}"}) for i in range(3)
        ]
        async with http.get(handles[2]["status_url"]) as r:
            assert r.status == 202
            queued = await r.json()
        assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 1
        await asyncio.sleep(0.05)
        async with http.get(handles[0]["status_url"] + "?logs=true") as r:
            running = await r.json()
            assert r.status == 202 and running["status"] == "IN_PROGRESS"
            assert running["logs"][0]["message"] == "Starting generation"
        async with http.get(handles[0]["status_url"] + "?logs=0") as r:
            assert (await r.json())["logs"] is None
        done = await wait_done(http, handles[2])
        async with http.get(handles[2]["status_url"] + "?logs=1") as r:
            assert r.status == 200
            body = await r.json()
        assert body["metrics"]["inference_time"] == pytest.approx(0.2) and body["logs"]
        assert "error" not in done

    run(scenario, workers=1, service=ServiceTime("fixed", 0.2))


def test_slot_accounting_adds_up():
    """The slot counters a benchmark reads: each job holds a slot at least its service time, within the span."""

    async def scenario(emu, http):
        handles = [
            await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": f"p{i}"}) for i in range(5)
        ]
        for h in handles:
            await wait_done(http, h)
        async with http.get(f"{emu.url}/_emulator/stats") as r:
            return (await r.json())["slots"]

    slots = run(scenario, workers=2, service=ServiceTime("fixed", 0.05))
    span = slots["last_end"] - slots["first_start"]
    assert slots["workers"] == 2 and slots["service"] == pytest.approx(5 * 0.05)
    assert slots["service"] <= slots["held"] <= 2 * span
    assert span >= 3 * 0.05  # 5 jobs on 2 slots: three rounds at least


def test_status_stream_sends_changes_keepalives_and_closes():
    """The SSE stream sends a data line per change, keep-alive comments, and ends after COMPLETED."""

    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        async with http.get(handle["status_url"] + "/stream") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            text = (await r.read()).decode()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        assert [e["status"] for e in events][-1] == "COMPLETED"
        assert "IN_PROGRESS" in [e["status"] for e in events]
        assert ": keepalive" in text

    run(scenario, service=ServiceTime("fixed", 0.35), keepalive=0.1)


def test_result_before_completion_and_both_result_paths():
    """The result is 400 before completion, then served at both /requests/{id} and /response."""

    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/imagen4/preview/fast", {"prompt": "x"})
        status, body = await result(http, handle)
        assert status == 400 and body == {"detail": "Request is still in progress"}
        await wait_done(http, handle)
        a = await result(http, handle)
        async with http.get(handle["response_url"] + "/response") as r:
            b = (r.status, await r.json())
        full = handle["response_url"].replace("/fal-ai/imagen4/", "/fal-ai/imagen4/preview/fast/")
        async with http.get(full) as r:
            c = (r.status, await r.json())
        assert a == b == c and a[0] == 200

    run(scenario, service=ServiceTime("fixed", 0.1))


def test_cancel_table():
    """Cancel: 202 while queued (then COMPLETED as client_cancelled), 400 when done, 404 unknown."""

    async def scenario(emu, http):
        first = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "a"})
        second = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "b"})
        async with http.put(second["cancel_url"]) as r:
            assert (r.status, await r.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        status = await wait_done(http, second)
        assert status["error_type"] == "client_cancelled"
        await wait_done(http, first)
        async with http.put(first["cancel_url"]) as r:
            assert (r.status, await r.json()) == (400, {"status": "ALREADY_COMPLETED"})
        async with http.put(f"{emu.url}/fal-ai/flux-1/requests/nope/cancel") as r:
            assert (r.status, await r.json()) == (404, {"status": "NOT_FOUND"})

    run(scenario, workers=1, service=ServiceTime("fixed", 0.2))


def test_sync_form_returns_output_and_429_when_full():
    """POST /run/{endpoint} answers with the output itself, or 429 when every slot is busy."""

    async def scenario(emu, http):
        async def call() -> tuple[int, Any, Any]:
            async with http.post(
                f"{emu.url}/run/fal-ai/flux-1/schnell", json={"prompt": "x", "seed": 3}
            ) as r:
                return r.status, await r.json(), r.headers

        first, second = await asyncio.gather(call(), call())
        statuses = sorted([first[0], second[0]])
        assert statuses == [200, 429]
        ok = first if first[0] == 200 else second
        busy = second if ok is first else first
        assert ok[1]["seed"] == 3 and ok[1]["images"][0]["url"].startswith(emu.url)
        assert (
            busy[1]["error_type"] == "concurrent_requests_limit"
            and busy[2]["X-Fal-Needs-Retry"] == "1"
        )
        for image in ok[1]["images"]:  # the output's files are served, as a queued request's are
            async with http.get(image["url"]) as r:
                assert r.status == 200 and len(await r.read()) == image["file_size"]

    run(scenario, workers=1, service=ServiceTime("fixed", 0.2))


def test_auth_is_required_when_a_key_is_set():
    """With a key, no header is 401 in fal's shape; Key and Bearer both work."""

    async def scenario(emu, http):
        url = f"{emu.url}/fal-ai/flux-1/schnell"
        async with http.post(url, json={"prompt": "x"}) as r:
            assert r.status == 401 and "detail" in await r.json()
        for scheme in ("Key", "Bearer"):
            async with http.post(
                url, json={"prompt": "x"}, headers={"Authorization": f"{scheme} sekrit"}
            ) as r:
                assert r.status == 200
        async with http.post(
            url, json={"prompt": "x"}, headers={"Authorization": "Key wrong"}
        ) as r:
            assert r.status == 401

    run(scenario, key="sekrit")


def test_unknown_endpoint_is_404():
    """An endpoint without a schema is not found (unless allow_unknown)."""

    async def scenario(emu, http):
        async with http.post(f"{emu.url}/acme/nothing", json={"prompt": "x"}) as r:
            return r.status

    assert run(scenario) == 404
    assert run(scenario, allow_unknown=True) == 200


def _examples():
    for path in sorted(DOCS.glob("*.txt")):
        for doc in parse_file(path):
            for ex in doc.examples:
                if ex.kind == "input":
                    yield pytest.param(doc.endpoint, ex.body, id=f"{path.name[:3]}:{ex.line}")


@pytest.mark.parametrize(("endpoint", "body"), list(_examples()))
def test_document_examples_get_schema_valid_outputs(registry: SchemaRegistry, endpoint, body):
    """Each request example yields an output that satisfies the endpoint's output schema."""

    async def scenario(emu, http):
        handle = await submit(emu, http, endpoint, body)
        await wait_done(http, handle)
        return await result(http, handle)

    status, output = run(scenario)
    assert status == 200
    assert registry.check(endpoint, output, "output") == []
    assert len(output["images"]) == body.get("num_images", 1)


def test_invalid_example_is_422_from_the_result_endpoint():
    """Invalid input is accepted at submit and rejected with fal's 422 detail list at the result."""

    async def scenario(emu, http):
        handle = await submit(
            emu, http, "fal-ai/imagen4/preview/ultra", {"prompt": "x", "num_images": 2, "colour": 1}
        )
        status = await wait_done(http, handle)
        return status, await result(http, handle)

    status, (code, body) = run(scenario)
    assert status["status"] == "COMPLETED" and code == 422
    assert [d["loc"] for d in body["detail"]] == [["body", "colour"], ["body", "num_images"]]
    assert body["detail"][1]["type"] == "less_than_equal" and body["detail"][1]["input"] == 2


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_images_are_deterministic_and_honour_size_and_format():
    """Same request → same bytes; another seed → other bytes; ratio and format are what was asked."""

    async def scenario(emu, http):
        async def one(
            body: dict[str, Any], endpoint: str = "fal-ai/imagen4/preview"
        ) -> list[bytes]:
            handle = await submit(emu, http, endpoint, body)
            await wait_done(http, handle)
            _, out = await result(http, handle)
            return [await download(http, img["url"]) for img in out["images"]]

        a = await one({"prompt": "a cat", "seed": 7, "aspect_ratio": "16:9"})
        b = await one({"prompt": "a cat", "seed": 7, "aspect_ratio": "16:9"})
        c = await one({"prompt": "a cat", "seed": 8, "aspect_ratio": "16:9"})
        jpeg = await one(
            {
                "prompt": "a cat",
                "seed": 7,
                "output_format": "jpeg",
                "num_images": 2,
                "image_size": {"width": 300, "height": 600},
            },
            "fal-ai/hidream-i1-fast",
        )
        return a, b, c, jpeg

    a, b, c, jpeg = run(scenario, max_side=512)
    assert a == b and a != c
    assert _image(a[0]).size == (512, 288) and _image(a[0]).format == "PNG"
    assert len(jpeg) == 2 and jpeg[0] != jpeg[1]
    assert _image(jpeg[0]).format == "JPEG" and _image(jpeg[0]).size == (256, 512)


def test_images_rendered_while_the_slot_sleeps_are_the_images_rendered_at_the_end():
    """A queued request's images (drawn in a thread during its service time) are byte for byte the sync form's
    (drawn at the end), for one image and several, in each format."""

    async def scenario(emu, http):
        for body in (
            {"prompt": "a red kite", "seed": 5},
            {"prompt": "two", "seed": 6, "num_images": 3},
            {"prompt": "jpeg", "seed": 7, "output_format": "jpeg"},
        ):
            handle = await submit(emu, http, "fal-ai/flux-1/schnell", body)
            await wait_done(http, handle)
            status, queued = await result(http, handle)
            async with http.post(
                f"{emu.url}/run/fal-ai/flux-1/schnell", json={**body, "sync_mode": True}
            ) as r:
                inline = await r.json()
            assert status == 200 and len(queued["images"]) == len(inline["images"]) == body.get(
                "num_images", 1
            )
            for a, b in zip(queued["images"], inline["images"], strict=True):
                assert await download(http, a["url"]) == base64.b64decode(b["url"].split(",", 1)[1])
                assert a["file_size"] == b["file_size"] and (a["width"], a["height"]) == (
                    b["width"],
                    b["height"],
                )
        async with http.get(f"{emu.url}/_emulator/stats") as r:
            assert (await r.json())["slots"][
                "prerendered"
            ] == 3  # the queued ones, not the sync ones

    run(scenario, workers=2, service=ServiceTime("fixed", 0.05))


def test_sync_mode_returns_data_uris():
    """sync_mode: true puts the image inline as a data: URI instead of a file URL."""

    async def scenario(emu, http):
        handle = await submit(
            emu, http, "fal-ai/flux-1/schnell", {"prompt": "x", "sync_mode": True}
        )
        await wait_done(http, handle)
        return (await result(http, handle))[1]

    out = run(scenario)
    url = out["images"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    assert _image(base64.b64decode(url.split(",", 1)[1])).format == "PNG"


# ---------------------------------------------------------------- faults


def test_fault_429_on_submit():
    """submit_429 answers 429 with X-Fal-Needs-Retry and creates no request."""

    async def scenario(emu, http):
        async with http.post(f"{emu.url}/fal-ai/flux-1/schnell", json={"prompt": "x"}) as r:
            return r.status, r.headers.get("X-Fal-Needs-Retry"), emu.stats()["submits"]

    assert run(scenario, faults=Faults(submit_429=1.0)) == (429, "1", 0)


def test_fault_ingress_5xx_looks_like_nginx():
    """Ingress errors are 502/503/504 with an nginx HTML body and no x-fal-request-id."""

    async def scenario(emu, http):
        async with http.get(f"{emu.url}/fal-ai/flux-1/requests/x/status") as r:
            return r.status, await r.text(), r.headers.get("x-fal-request-id")

    status, body, rid = run(scenario, faults=Faults(ingress_5xx=1.0))
    assert status in (502, 503, 504) and "nginx" in body and rid is None


def test_fault_runner_error_completes_with_error_and_replays_500():
    """A runner failure is COMPLETED with error_type runner_server_error and a 500 result."""

    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        status = await wait_done(http, handle)
        return status, await result(http, handle)

    status, (code, body) = run(scenario, faults=Faults(runner_error=1.0))
    assert status["error_type"] == "runner_server_error" and status["error"]
    assert code == 500 and body["error_type"] == "runner_server_error"


def _first_image(**faults: Any) -> Callable[..., Any]:
    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        await wait_done(http, handle)
        _, out = await result(http, handle)
        image = out["images"][0]
        try:
            return image, await download(http, image["url"])
        except aiohttp.ClientPayloadError as exc:
            return image, exc

    return scenario


def test_fault_dropped_download():
    """A dropped download ends the connection early: the client sees a payload error."""
    _, got = run(_first_image(), faults=Faults(drop_download=1.0))
    assert isinstance(got, aiohttp.ClientPayloadError)


def test_fault_truncated_image():
    """A truncated download is shorter than the file_size the result reported, and does not decode."""
    image, data = run(_first_image(), faults=Faults(truncate_image=1.0))
    assert len(data) < image["file_size"]
    with pytest.raises(OSError):
        _image(data)


def test_fault_corrupt_image():
    """A corrupted download has the reported size but fails to decode."""
    image, data = run(_first_image(), faults=Faults(corrupt_image=1.0))
    assert len(data) == image["file_size"]
    with pytest.raises(Exception):  # noqa: B017 - Pillow raises several types for damaged data
        Image.open(io.BytesIO(data)).verify()
        _image(data)


def test_fault_stuck_in_queue():
    """A stuck request stays IN_QUEUE at position 0, however long one waits."""

    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        await asyncio.sleep(0.2)
        async with http.get(handle["status_url"]) as r:
            return r.status, await r.json()

    status, body = run(scenario, faults=Faults(stuck=1.0))
    assert status == 202 and body["status"] == "IN_QUEUE" and body["queue_position"] == 0


def test_fault_results_expire():
    """After the retention time the status, result and files are 404."""

    async def scenario(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        await wait_done(http, handle)
        _, out = await result(http, handle)
        await asyncio.sleep(0.3)
        codes = []
        for url in (handle["status_url"], handle["response_url"], out["images"][0]["url"]):
            async with http.get(url) as r:
                codes.append(r.status)
        return codes

    assert run(scenario, faults=Faults(retention=0.2)) == [404, 404, 404]


def test_fault_locked_account():
    """After lock_after submits every submit is 403 'User is locked'; status calls still work."""

    async def scenario(emu, http):
        first = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        async with http.post(f"{emu.url}/fal-ai/flux-1/schnell", json={"prompt": "y"}) as r:
            locked = (r.status, await r.json())
        async with http.get(first["status_url"]) as r:
            return locked, r.status

    (code, body), status_code = run(scenario, faults=Faults(lock_after=1))
    assert code == 403 and body["detail"].startswith("User is locked")
    assert status_code in (200, 202)


def test_stats_count_calls_and_duplicate_inputs():
    """Stats count each kind of call and inputs submitted more than once."""

    async def scenario(emu, http):
        for _ in range(2):
            handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "same"})
        await wait_done(http, handle)
        _, out = await result(http, handle)
        await download(http, out["images"][0]["url"])
        async with http.get(f"{emu.url}/_emulator/stats") as r:
            return await r.json()

    stats = run(scenario)
    assert (
        stats["submits"] == 2 and stats["distinct_inputs"] == 1 and stats["duplicate_submits"] == 1
    )
    assert stats["result_calls"] == 1 and stats["downloads"] == 1 and stats["status_calls"] >= 1


# ---------------------------------------------------------------- accounting per credential

KEYS = (("acct_a", "key-of-a"), ("acct_b", "key-of-b"))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


async def _stats(emu: Emulator, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{emu.url}/_emulator/stats") as r:  # no credentials: the stats are public
        assert r.status == 200
        return await r.json()


def test_each_key_is_its_own_account_with_in_flight_peaks_and_duplicates():
    """Two keys: submits, in-flight peaks and duplicate inputs are counted apart; a third key is 401."""

    async def scenario(emu, http):
        url = f"{emu.url}/fal-ai/flux-1/schnell"
        handles = []
        for key, prompt in (
            ("key-of-a", "one"),
            ("key-of-a", "two"),
            ("key-of-a", "one"),
            ("key-of-b", "one"),
        ):
            async with http.post(url, json={"prompt": prompt}, headers=_auth(key)) as r:
                assert r.status == 200
                handles.append(await r.json())
        async with http.post(url, json={"prompt": "x"}, headers=_auth("key-of-c")) as r:
            assert r.status == 401
        during = await _stats(emu, http)
        for handle, key in zip(
            handles, ("key-of-a", "key-of-a", "key-of-a", "key-of-b"), strict=True
        ):
            await wait_done(http, handle, headers=_auth(key))
            async with http.get(handle["response_url"], headers=_auth(key)) as r:
                assert r.status == 200
        return during, await _stats(emu, http), handles

    # 0.3 s of service: nothing completes while the five calls are made (the first "one", abandoned by its
    # duplicate, would leave flight at once if it had).
    during, after, handles = run(scenario, keys=KEYS, service=ServiceTime("fixed", 0.3))
    a, b = during["accounts"]["acct_a"], during["accounts"]["acct_b"]
    assert (a["submits"], a["in_flight"], a["peak_in_flight"], a["duplicate_submits"]) == (
        3,
        3,
        3,
        1,
    )
    assert (b["submits"], b["in_flight"], b["peak_in_flight"], b["duplicate_submits"]) == (
        1,
        1,
        1,
        0,
    )
    assert (
        during["in_flight"] == 4 and during["duplicate_submits"] == 2
    )  # "one" went in three times in all
    assert after["in_flight"] == 0 and after["peak_in_flight"] == 4
    assert (
        sorted(h["request_id"] for h in handles) == during["open_ids"] and after["open_ids"] == []
    )
    assert during["last_closed_at"] is None and after["last_closed_at"] >= max(
        after["submit_times"]
    )
    assert (
        after["accounts"]["acct_a"]["in_flight"] == 0
        and after["accounts"]["acct_a"]["peak_in_flight"] == 3
    )
    assert after["accounts"]["acct_a"]["peak_running"] <= 2  # two worker slots, shared
    assert "key-of-a" not in json.dumps(after) and "key-of-b" not in json.dumps(after)


@given(limit=st.integers(1, 4), submits=st.integers(1, 9))
@settings(max_examples=10, deadline=None)
def test_an_accounts_slots_hold_it_to_its_limit_and_the_rest_wait_in_queue(limit, submits):
    """As on fal: an account with `limit` slots runs that many, the rest wait IN_QUEUE (never refused), and a full
    account never holds up another's request; every request completes."""

    async def scenario(emu: Emulator, http: aiohttp.ClientSession) -> Any:
        url = f"{emu.url}/fal-ai/flux-1/schnell"
        handles = []
        for i in range(submits):
            async with http.post(url, json={"prompt": f"p{i}"}, headers=_auth("key-of-a")) as r:
                assert r.status == 200  # beyond the limit too: queued, not refused
                handles.append(await r.json())
        async with http.post(url, json={"prompt": "b"}, headers=_auth("key-of-b")) as r:
            other = await r.json()
        await asyncio.sleep(0.05)  # a tenth of the service time: the first round has started
        during = await _stats(emu, http)
        states = []
        for handle in handles:
            async with http.get(handle["status_url"], headers=_auth("key-of-a")) as r:
                states.append((await r.json())["status"])
        async with http.get(other["status_url"], headers=_auth("key-of-b")) as r:
            other_state = (await r.json())["status"]
        for handle in handles:
            await wait_done(http, handle, headers=_auth("key-of-a"))
        return during, states, other_state, await _stats(emu, http)

    during, states, other_state, after = run(
        scenario,
        keys=KEYS,
        workers=16,
        account_limits=(("acct_a", limit),),
        service=ServiceTime("fixed", 0.5),
    )
    running = min(limit, submits)
    assert states == ["IN_PROGRESS"] * running + ["IN_QUEUE"] * (submits - running)
    assert other_state == "IN_PROGRESS"  # acct_b has no limit of its own: only the 16 workers
    a = during["accounts"]["acct_a"]
    assert (a["running"], a["queued"]) == (running, submits - running)
    done = after["accounts"]["acct_a"]
    # A request a slot took at once never counted as queued.
    assert (done["peak_running"], done["peak_queued"], done["queued"]) == (
        running,
        submits - running,
        0,
    )


@given(
    steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), min_size=1, max_size=12)
)
@settings(max_examples=20, deadline=None)
def test_peak_in_flight_matches_a_model_of_submit_and_fetch(steps):
    """For any order of submits and result fetches, each account's in-flight and peak match a counter model."""
    keys = {"a": "key-of-a", "b": "key-of-b"}

    async def scenario(emu, http):
        pending: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        model = {"a": [0, 0], "b": [0, 0]}  # in flight, peak
        for i, (who, fetch) in enumerate(steps):
            async with http.post(
                f"{emu.url}/fal-ai/flux-1/schnell",
                json={"prompt": f"p{i}"},
                headers=_auth(keys[who]),
            ) as r:
                pending[who].append(await r.json())
            model[who][0] += 1
            model[who][1] = max(model[who][1], model[who][0])
            if fetch:  # hand over the oldest outstanding result of this account
                handle = pending[who].pop(0)
                await wait_done(http, handle, headers=_auth(keys[who]))
                async with http.get(handle["response_url"], headers=_auth(keys[who])) as r:
                    assert r.status == 200
                model[who][0] -= 1
        stats = await _stats(emu, http)
        for who in ("a", "b"):
            got = stats["accounts"][f"acct_{who}"]
            assert [got["in_flight"], got["peak_in_flight"]] == model[who]
            assert got["submits"] == sum(1 for w, _ in steps if w == who)

    run(scenario, keys=KEYS, service=ServiceTime("fixed", 0.0))


def test_in_flight_ends_on_cancel_failure_and_expiry_but_not_on_a_proxy_500():
    """A cancelled request, a failure told by status and an expired result leave flight; a proxy's 500 does not."""

    async def cancelled(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        before = (await _stats(emu, http))["in_flight"]
        async with http.put(handle["cancel_url"]) as r:
            assert r.status == 202
        return before, (await _stats(emu, http))["accounts"]["anonymous"]

    before, anon = run(cancelled, faults=Faults(stuck=1.0))
    assert before == 1 and anon["in_flight"] == 0 and anon["peak_in_flight"] == 1

    async def expired(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        await wait_done(http, handle)
        await asyncio.sleep(0.3)  # past retention, never fetched
        return (await _stats(emu, http))["in_flight"]

    assert run(expired, faults=Faults(retention=0.1)) == 0

    async def failed(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        body = await wait_done(http, handle)  # the status names the failure: no result fetch needed
        return body["error_type"], (await _stats(emu, http))["in_flight"]

    assert run(failed, faults=Faults(runner_error=1.0)) == ("runner_server_error", 0)

    async def proxy_500(emu, http):
        handle = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "x"})
        await wait_done(http, handle)
        async with http.get(handle["response_url"]) as r:
            assert r.status == 500
        return (await _stats(emu, http))["in_flight"]

    assert run(proxy_500, faults=Faults(result_500=1.0)) == 1


def test_a_request_abandoned_by_a_resubmission_leaves_flight_once_it_completes():
    """The same input sent again by one account: the earlier request counts while it runs, not after."""

    async def scenario(emu, http):
        first = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "again"})
        second = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "again"})
        both = (await _stats(emu, http))["in_flight"]
        await wait_done(http, first)
        await wait_done(http, second)
        after_completion = (await _stats(emu, http))[
            "in_flight"
        ]  # only `second` is still owed to someone
        done = await submit(emu, http, "fal-ai/flux-1/schnell", {"prompt": "other"})
        await wait_done(http, done)
        await submit(
            emu, http, "fal-ai/flux-1/schnell", {"prompt": "other"}
        )  # finished, never fetched, resent
        return both, after_completion, await _stats(emu, http)

    both, after_completion, stats = run(scenario, service=ServiceTime("fixed", 0.2))
    assert (both, after_completion) == (2, 1)
    assert (
        stats["in_flight"] == 2 and stats["duplicate_submits"] == 2
    )  # `second` and the resent `other`


def test_the_kept_peak_leaves_out_requests_abandoned_by_a_resend_from_any_account():
    """A resend (even under another key) makes the raw peak exceed what the client held on purpose; the kept peak does not."""

    async def scenario(emu, http):
        url = f"{emu.url}/fal-ai/flux-1/schnell"
        for key, prompt in (
            ("key-of-a", "x"),
            ("key-of-a", "y"),
            ("key-of-b", "x"),
            ("key-of-a", "z"),
        ):
            async with http.post(url, json={"prompt": prompt}, headers=_auth(key)) as r:
                assert r.status == 200
        return await _stats(emu, http)

    stats = run(scenario, keys=KEYS, service=ServiceTime("fixed", 5.0))
    a, b = stats["accounts"]["acct_a"], stats["accounts"]["acct_b"]
    assert (a["peak_in_flight"], a["peak_in_flight_kept"]) == (
        3,
        2,
    )  # the first "x" was given up, still running
    assert (b["peak_in_flight"], b["peak_in_flight_kept"]) == (1, 1)


def test_callers_without_configured_keys_are_told_apart_by_a_hash_of_their_key():
    """With no keys required, each caller is its own account, named by a hash, never by its key."""

    async def scenario(emu, http):
        for key in ("first-secret", "second-secret", "first-secret"):
            async with http.post(
                f"{emu.url}/fal-ai/flux-1/schnell", json={"prompt": key}, headers=_auth(key)
            ) as r:
                assert r.status == 200
        return await _stats(emu, http)

    stats = run(scenario)
    assert sorted(a["submits"] for a in stats["accounts"].values()) == [1, 2]
    assert all(label.startswith("key-") for label in stats["accounts"])
    assert "secret" not in json.dumps(stats["accounts"])


def test_a_locked_account_is_refused_while_the_other_works():
    """locked=(label,) answers that account's submits 403 'User is locked'; other keys go on."""

    async def scenario(emu, http):
        url = f"{emu.url}/fal-ai/flux-1/schnell"
        async with http.post(url, json={"prompt": "x"}, headers=_auth("key-of-a")) as r:
            locked = r.status, (await r.json())["detail"]
        async with http.post(url, json={"prompt": "x"}, headers=_auth("key-of-b")) as r:
            return locked, r.status

    (code, detail), other = run(scenario, keys=KEYS, locked=("acct_a",))
    assert code == 403 and detail.startswith("User is locked") and other == 200


def test_a_request_belongs_to_the_account_that_submitted_it():
    """Another account's key gets 404 on status, result and cancel (counted as foreign_reads); its own key reads it."""

    async def scenario(emu, http):
        async with http.post(
            f"{emu.url}/fal-ai/flux-1/schnell", json={"prompt": "x"}, headers=_auth("key-of-a")
        ) as r:
            handle = await r.json()
        codes = []
        for method, url in (
            ("GET", handle["status_url"]),
            ("GET", handle["response_url"]),
            ("PUT", handle["cancel_url"]),
        ):
            async with http.request(method, url, headers=_auth("key-of-b")) as r:
                codes.append(r.status)
        await wait_done(http, handle, headers=_auth("key-of-a"))
        async with http.get(handle["response_url"], headers=_auth("key-of-a")) as r:
            codes.append(r.status)
        return codes, await _stats(emu, http)

    codes, stats = run(scenario, keys=KEYS)
    assert codes == [404, 404, 404, 200] and stats["foreign_reads"] == 3


def test_emulator_process_serves_several_keys_and_public_stats(tmp_path: Path):
    """`renderer emulator --key-env A --key-env B` accepts both keys and reports per variable at /_emulator/stats."""
    import urllib.error
    import urllib.request

    env = {
        **os.environ,
        "EMU_KEY_A": "process-key-a",
        "EMU_KEY_B": "process-key-b",
        "PYTHONPATH": str(ROOT),
    }
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "renderer",
            "emulator",
            "--key-env",
            "EMU_KEY_A",
            "--key-env",
            "EMU_KEY_B",
            "--latency",
            "0",
            "--fault-result-500",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            for key in ("process-key-a", "process-key-b", "process-key-b"):
                request = urllib.request.Request(
                    f"{url}/fal-ai/flux-1/schnell",
                    data=b'{"prompt": "x"}',
                    headers={"Authorization": f"Key {key}", "Content-Type": "application/json"},
                )
                urllib.request.urlopen(request, timeout=10).close()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(
                    urllib.request.Request(f"{url}/fal-ai/flux-1/schnell", data=b"{}"), timeout=10
                )
            refused.value.close()
            assert refused.value.code == 401
            with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as r:
                stats = json.loads(r.read())
        finally:
            proc.terminate()
    assert stats["accounts"]["EMU_KEY_A"]["submits"] == 1
    assert (
        stats["accounts"]["EMU_KEY_B"]["submits"] == 2
        and stats["accounts"]["EMU_KEY_B"]["duplicate_submits"] == 1
    )
    assert "process-key" not in json.dumps(stats)


def test_service_time_parsing():
    """Service times: a number, fixed:S, uniform:A:B, lognormal:M:S; anything else is refused."""
    assert ServiceTime.parse("0.5") == ServiceTime("fixed", 0.5)
    assert ServiceTime.parse("uniform:0.1:0.3").kind == "uniform"
    with pytest.raises(ValueError):
        ServiceTime.parse("gaussian:1")


# ---------------------------------------------------------------- the official client

CLIENT = textwrap.dedent("""
    import json, time
    import fal_client

    out = {}
    out["subscribe"] = fal_client.subscribe(
        "fal-ai/imagen4/preview/ultra", arguments={"prompt": "a T-Rex on a pixel beach", "seed": 3},
        with_logs=True)
    handle = fal_client.submit("fal-ai/flux-1/schnell", arguments={"prompt": "a cat", "seed": 4})
    out["status"] = type(fal_client.status("fal-ai/flux-1/schnell", handle.request_id, with_logs=True)).__name__
    out["result"] = handle.get()
    blocker = fal_client.submit("fal-ai/hidream-i1-fast", arguments={"prompt": "slow"})
    queued = fal_client.submit("fal-ai/hidream-i1-fast", arguments={"prompt": "to cancel"})
    queued.cancel()
    try:
        queued.get()
        out["cancelled"] = "finished"
    except fal_client.FalClientHTTPError as exc:
        out["cancelled"] = exc.status_code
    print(json.dumps(out))
""")


def test_emulator_process_account_slots_flag_queues_beyond_the_limit():
    """`renderer emulator --account-slots 2`: five submits of one account run two at once, three wait IN_QUEUE."""
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "renderer", "emulator", "--account-slots", "2"]
    with subprocess.Popen(
        [*command, "--workers", "8", "--latency", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            for i in range(5):
                request = urllib.request.Request(
                    f"{url}/fal-ai/flux-1/schnell",
                    data=json.dumps({"prompt": f"p{i}"}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                urllib.request.urlopen(request, timeout=10).close()  # none refused
            with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as r:
                stats = json.loads(r.read())
        finally:
            proc.terminate()
    (account,) = stats["accounts"].values()
    assert (account["running"], account["queued"], account["submits"]) == (2, 3, 5)


def test_official_fal_client_against_the_emulator(tmp_path: Path):
    """fal-client's subscribe, submit + status + result and cancel work against the emulator.

    The client hard-codes https and reads FAL_QUEUE_RUN_HOST at import, so the emulator serves
    TLS with a certificate made here, the client trusts it through SSL_CERT_FILE, and runs in
    its own process with the host pointed at the emulator.
    """
    cert, key = self_signed(tmp_path)
    env = {**os.environ, "FAL_KEY": "conformance-key", "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "renderer",
            "emulator",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--key-env",
            "FAL_KEY",
            "--workers",
            "1",
            "--latency",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    ) as server:
        try:
            url = server.stdout.readline().strip()
            assert url.startswith("https://127.0.0.1:"), url
            host = url.removeprefix("https://")
            client_env = {
                **env,
                "FAL_QUEUE_RUN_HOST": host,
                "FAL_RUN_HOST": host,
                "SSL_CERT_FILE": str(cert),
            }
            done = subprocess.run(
                [sys.executable, "-c", CLIENT],
                capture_output=True,
                text=True,
                env=client_env,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            out = json.loads(done.stdout)
        finally:
            server.terminate()
    assert out["subscribe"]["seed"] == 3 and out["subscribe"]["images"][0]["url"].startswith(url)
    assert out["status"] in ("Queued", "InProgress", "Completed")
    assert out["result"]["seed"] == 4
    assert out["cancelled"] == 499
