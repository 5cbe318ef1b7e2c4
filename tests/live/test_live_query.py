"""Query-guided compression live: a consumer's question, posted to the endpoint while a camera runs,
re-weights the windows that follow (a tiny random SigLIP as the vision tower, a real RTSP camera)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from _live_helpers import wait_until

from streamzip.encoders.tiny import save_tiny_model
from streamzip.live import serve, unpack_tokens
from streamzip.pipeline import Pipeline

pytestmark = pytest.mark.timeout(120)


def post(url: str, body: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def next_windows(url: str, n: int, timeout_s: float = 30) -> list[bytes]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        return [(await ws.receive(timeout=timeout_s)).data for _ in range(n)]


@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("siglip", tmp_path_factory.mktemp("models") / "siglip")


def guided_pipeline(model: Path) -> Pipeline:
    # 1 s packets; each 2 s window keeps its 4 highest-scoring tokens. With a query at frame level every
    # token of a frame has the frame's relevance, so the kept 4 all come from the most relevant frame.
    return (Pipeline("guided", decode={"fps": 2, "width": 64, "height": 64, "batch_frames": 2})
            .add("hf_encoder", id="enc", model=str(model), device="cpu", query_level="frame")
            .add("framefusion", threshold=2.0, max_tokens=4, window_s=2.0)
            .add("window", window_s=2.0))


@pytest.mark.parametrize("runtime", ["local", "ray"])
def test_a_posted_question_reweights_the_following_windows(rtsp_server, siglip, runtime) -> None:  # type: ignore[no-untyped-def]
    pool = {"encoder_pool": 2} if runtime == "ray" else {}
    server = serve(guided_pipeline(siglip), [rtsp_server.url("/cam1")], port=0, runtime=runtime, **pool)
    try:
        stream = server.streams["cam1"]
        assert wait_until(lambda: stream.windows.get("video", 0) >= 1 or stream.status == "failed", 60), stream.info()
        if runtime == "ray":  # the encoder runs on a pool of the configured size
            from streamzip.runtime import ray as ray_runtime

            assert [len(p.actors) for p in ray_runtime._POOLS.values()] == [2]
        assert stream.info()["query"] is None
        # bad bodies are refused with the shape to send
        assert post(server.url + "/streams/cam1/query", b"not json")[0] == 400
        code, body = post(server.url + "/streams/cam1/query", json.dumps({"question": "x"}).encode())
        assert code == 400 and '"query"' in body["error"]
        assert post(server.url + "/streams/nope/query", b'{"query": "x"}')[0] == 404

        code, body = post(server.url + "/streams/cam1/query", json.dumps({"query": "a red car"}).encode())
        assert code == 200 and body["streams"]["cam1"] == {"query": "a red car", "steps": ["enc"]}
        assert stream.info()["query"] == "a red car"
        # the window being encoded may mix the old and the new scores; the later ones are all the query's
        blobs = asyncio.run(next_windows(server.url.replace("http", "ws") + "/streams/cam1/ws", 4))
        for blob in blobs[2:]:
            (packet,), _ = unpack_tokens(blob)
            assert packet.num_tokens == 4
            assert len(set(packet.t0.tolist())) == 1, packet.t0  # one frame: the most relevant one

        code, body = post(server.url + "/query", b'{"query": null}')  # every stream; null drops it
        assert code == 200 and body["streams"]["cam1"]["query"] is None and stream.info()["query"] is None
    finally:
        (result,) = server.stop()
        if runtime == "ray":
            import ray

            ray.shutdown()
    assert result.ok, result.error


def test_a_question_for_a_pipeline_without_a_text_tower_is_refused(rtsp_server, live_pipeline) -> None:  # type: ignore[no-untyped-def]
    server = serve(live_pipeline, [rtsp_server.url("/cam1")], port=0)
    try:
        code, body = post(server.url + "/streams/cam1/query", b'{"query": "a red car"}')
        assert code == 400 and "no step that takes a query" in body["error"] and "hf_encoder" in body["error"]
    finally:
        server.stop()
