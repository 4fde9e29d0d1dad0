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
from semrec.pipeline import Run, TrainedRun
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
    stored = TrainedRun.load(root / "run", echo=quiet)
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


# ---------------------------------------------------------------- limits and strictness


@pytest.fixture(scope="module")
def small_limit(exported, reference):
    """A server with a 4 kB request limit."""
    app = create_app(reference, TopKCache(exported[1]), max_request_bytes=4096)
    with running_in_background(app) as url:
        yield url


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_response(raw) -> str:
    """One HTTP response from a socket: headers, then the body their Content-Length gives
    (the server may send them in separate segments, so one ``recv`` can miss the body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = raw.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = raw.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_over_the_limit_is_refused_before_it_is_read(small_limit, reference):
    big = b'{"history": [' + b'"i0",' * 20_000 + b'"i0"]}'  # 100 kB
    declared = httpx.post(
        f"{small_limit}/recommend", content=big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and "limit of 4096 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: counted while read
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = httpx.post(
        f"{small_limit}/recommend", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    ok = post(small_limit, {"history": reference.item_ids[:3], "k": 3})
    assert ok.status_code == 200  # the server goes on serving
    # 50 MB declared: refused from the header before the body is sent, so nothing is read
    # and the server's memory does not grow
    import socket
    from urllib.parse import urlsplit

    before = _max_rss_mb()
    address = urlsplit(small_limit)
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        reply = _read_response(raw)
    assert reply.startswith("HTTP/1.1 413") and "limit of 4096 bytes" in reply
    assert _max_rss_mb() - before < 20


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"history": ["i0"], "k": True}, "body.k: Input should be a valid integer"),
        ({"history": ["i0"], "k": "5"}, "body.k: Input should be a valid integer"),
        ({"history": ["i0"], "exclude_history": 1}, "body.exclude_history"),
        ({"history": ["i0", True]}, "body.history.1"),
    ],
)
def test_request_types_are_strict(server, body, message):
    url, _ = server
    response = post(url, body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_error_replies_do_not_echo_the_request(server):
    url, _ = server
    long_text = "x" * 50_000
    for body in ({"history": long_text}, {"history": [long_text], "k": 3}, {"user": long_text}):
        response = post(url, body)
        assert response.status_code in (404, 422), response.text
        assert len(response.content) < 2_000 and long_text not in response.text


def test_the_reply_k_counts_the_items_returned_and_says_why_fewer(server, reference):
    url, _ = server
    history = reference.item_ids[:21]  # 3 items left once the history is excluded
    response = post(url, {"history": history, "k": 8})
    body = response.json()
    assert response.status_code == 200
    assert body["k"] == len(body["items"]) < 8 and body["requested_k"] == 8
    assert "history's items were excluded" in body["note"]
    full = post(url, {"history": history[:2], "k": 4}).json()
    assert full["k"] == full["requested_k"] == 4 and full["note"] is None


def _cache_file(path: Path, records: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_cache_is_checked_against_the_catalogue_when_loaded(reference, tmp_path):
    good = {"user": "u1", "items": reference.item_ids[:2], "scores": [0.0, -1.0]}
    alien = {"user": "u2", "items": ["../../etc/passwd"], "scores": [0.0]}
    with pytest.raises(ValueError, match=r"record 2 \(user 'u2'\) names 1 item\(s\) not in"):
        create_app(reference, TopKCache(_cache_file(tmp_path / "a.jsonl", [good, alien])))
    with pytest.raises(
        ValueError, match=r"record 2: user 'u1' is cached twice \(first in record 1"
    ):
        TopKCache(_cache_file(tmp_path / "b.jsonl", [good, good]))


def test_start_up_failures_are_one_line_errors(exported, tmp_path, capsys):
    import shutil

    from semrec.cli import main

    assert main(["serve", "--dir", str(exported[0]), "--port", "70000"]) == 1
    assert "--port must be between 0 and 65535" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(exported[0], broken)
    weights = next(p for p in broken.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert main(["serve", "--dir", str(broken), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not load the export" in err and "Traceback" not in err
