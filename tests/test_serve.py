"""`semrec serve`: the HTTP service over an export, end to end on loopback (tiny run)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from semrec.cli import _parser
from semrec.config import load_config
from semrec.pipeline import Run
from semrec.serving import TopKCache, read_predictions
from semrec.serving.export import export_run
from semrec.serving.http import create_app, running_in_background
from semrec.serving.predict import predict_top_k
from semrec.serving.recommender import load_recommender

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
QUICK = ["train.epochs=3", "train.check_val_every_n_epoch=3", "eval.baselines=[]"]
CACHED_K = 5


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(export directory, top-K cache file) of the tiny run, trained once for the module."""
    root = tmp_path_factory.mktemp("serve")
    run = Run(load_config(TINY, QUICK), root / "run", echo=quiet)
    run.fit()
    stored = Run(load_config(root / "run" / "config.yaml"), root / "run", read_only=True)
    export_run(stored, root / "export", echo=quiet)
    cache = predict_top_k(stored, k=CACHED_K, output=root / "top5.jsonl", echo=quiet)
    return root / "export", cache.path


@pytest.fixture(scope="module")
def reference(exported):
    """A recommender of its own, to compare the server's live answers with."""
    return load_recommender(exported[0])


@pytest.fixture(scope="module")
def server(exported):
    """(base URL, app): the export and its cache served on an ephemeral loopback port; a
    live request waits up to 200 ms for batch-mates, so concurrent ones share a batch."""
    directory, cache_path = exported
    app = create_app(load_recommender(directory), TopKCache(cache_path), max_wait_ms=200)
    with running_in_background(app) as url:
        yield url, app


def post(url: str, body) -> httpx.Response:
    return httpx.post(f"{url}/recommend", json=body, timeout=30)


def pairs(response: httpx.Response) -> list[tuple[str, float]]:
    return [(item["item_id"], item["score"]) for item in response.json()["items"]]


def test_health_says_what_is_loaded(server, reference):
    url, _ = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok"
    assert health["items"] == reference.num_items == 24
    assert health["cached_users"] == 48 and health["cache_k"] == CACHED_K
    assert health["model"] == "tiny"


def test_a_cached_user_is_answered_from_the_cache_file(server, exported):
    url, _ = server
    record = next(iter(read_predictions(exported[1])))
    response = post(url, {"user": record["user"], "k": CACHED_K})
    assert response.status_code == 200
    assert response.json()["source"] == "cache" and response.json()["k"] == CACHED_K
    assert pairs(response) == list(zip(record["items"], record["scores"]))
    fewer = post(url, {"user": record["user"], "k": 2, "history": ["nope"]})
    assert fewer.json()["source"] == "cache" and pairs(fewer) == pairs(response)[:2]


def test_a_history_is_decoded_live_exactly_as_the_recommender_does(server, reference):
    url, _ = server
    history = reference.item_ids[3:7]
    for k, exclude in ((5, True), (8, False)):
        response = post(url, {"history": history, "k": k, "exclude_history": exclude})
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "live" and response.json()["k"] == k
        expected = reference.recommend(history, k, exclude_history=exclude)
        assert pairs(response) == [(r.item_id, r.score) for r in expected]
    default = post(url, {"history": history})  # k: the run's default
    assert len(default.json()["items"]) == reference.default_k


def test_a_user_the_cache_cannot_answer_falls_back_to_the_history(server, exported, reference):
    url, _ = server
    history = reference.item_ids[:3]
    expected = [(r.item_id, r.score) for r in reference.recommend(history, CACHED_K + 1)]
    user = next(iter(read_predictions(exported[1])))["user"]
    for body in (
        {"user": user, "k": CACHED_K + 1, "history": history},  # cache holds 5
        {"user": "nobody", "k": CACHED_K + 1, "history": history},
    ):
        response = post(url, body)
        assert response.json()["source"] == "live" and pairs(response) == expected


def test_concurrent_live_requests_are_batched_and_answered_as_serial_ones(server, reference):
    url, app = server
    catalogue = reference.item_ids
    bodies = [
        {"history": catalogue[i : i + 3], "k": 3 + i % 2, "exclude_history": i % 3 != 0}
        for i in range(8)
    ]
    serial = [pairs(post(url, body)) for body in bodies]
    bad = {"history": [catalogue[0], "no-such-item"], "k": 3}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            requests = [client.post("/recommend", json=body) for body in [*bodies, bad]]
            return await asyncio.gather(*requests)

    batches = app.state.batcher.batches
    *answers, refused = asyncio.run(together())
    assert refused.status_code == 422 and "no-such-item" in refused.json()["detail"]
    for answer, expected in zip(answers, serial):
        assert answer.status_code == 200
        assert [item for item, _ in pairs(answer)] == [item for item, _ in expected]
        # padded batch-mates may move a score in the last float bits
        assert [s for _, s in pairs(answer)] == pytest.approx([s for _, s in expected], abs=1e-5)
    # 8 requests in at most one batch per (k, exclude_history) group: 4 groups, maybe split
    assert app.state.batcher.batches - batches < len(bodies)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"history": ["i0", "nope", "i_999"], "k": 3}, 422, "'nope', 'i_999'"),
        ({"history": ["i0"], "k": 0}, 422, "k must be between 1 and the 24"),
        ({"history": ["i0"], "k": 25}, 422, "got 25"),
        ({"user": "nobody", "k": 3}, 404, "'nobody' is not in the top-K cache"),
        ({"history": [], "k": 3}, 422, "a history needs at least one item"),
        ({"history": "i0"}, 422, "body.history: Input should be a valid list"),
        ({"k": 3}, 422, 'give a "user"'),
        ({"history": ["i0"], "kk": 3}, 422, "body.kk: Extra inputs"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(server, body, status, message):
    url, _ = server
    response = post(url, body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_a_cached_user_asking_more_than_the_cache_holds_without_a_history_is_refused(
    server, exported
):
    url, _ = server
    user = next(iter(read_predictions(exported[1])))["user"]
    response = post(url, {"user": user, "k": CACHED_K + 1})
    assert response.status_code == 422
    assert "holds only 5 items" in response.json()["detail"]


def test_malformed_json_is_refused_by_name(server):
    url, _ = server
    response = httpx.post(
        f"{url}/recommend", content=b'{"history": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_without_a_cache_a_user_needs_a_history(reference):
    app = create_app(reference)
    with running_in_background(app) as url:
        response = post(url, {"user": "u1", "k": 3})
        assert httpx.get(f"{url}/health").json()["cached_users"] == 0
    assert response.status_code == 404
    assert "no top-K cache is loaded" in response.json()["detail"]


def test_the_serve_command_line():
    args = _parser().parse_args(["serve", "--dir", "x", "--cache", "t.jsonl", "--port", "0"])
    assert (args.dir, args.cache, args.host, args.port) == ("x", "t.jsonl", "127.0.0.1", 0)
    assert (args.max_batch, args.max_wait_ms) == (16, 5.0)


def test_fastapi_is_imported_only_by_the_http_module_and_named_when_missing():
    code = (
        "import sys, semrec, semrec.serving; assert 'fastapi' not in sys.modules\n"
        "sys.modules['fastapi'] = None\n"
        "try:\n    import semrec.serving.http\nexcept ImportError as err:\n    print(err)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'semrec[serve]'" in result.stdout


def test_a_failing_decode_is_a_500_and_the_server_keeps_serving(exported, monkeypatch):
    recommender = load_recommender(exported[0])
    app = create_app(recommender, max_wait_ms=1)
    original = recommender.recommend_batch
    with running_in_background(app) as url:
        monkeypatch.setattr(recommender, "recommend_batch", lambda *a, **kw: 1 / 0)
        broken = post(url, {"history": ["i0", "i1"], "k": 3})
        assert broken.status_code == 500
        assert "decoding failed: ZeroDivisionError" in broken.json()["detail"]
        monkeypatch.setattr(recommender, "recommend_batch", original)
        assert post(url, {"history": ["i0", "i1"], "k": 3}).status_code == 200
