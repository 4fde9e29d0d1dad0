"""The annotate stage: request prompts, annotators, the cache and its recovery."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from semrec.annotate import (
    ANNOTATORS,
    AnnotationError,
    AnnotationStore,
    JsonlAnnotator,
    LocalModelAnnotator,
    OpenAICompatibleAnnotator,
    annotate,
    annotation_keys,
    annotation_requests,
    load_annotations,
    prompt_hash,
)
from semrec.data.dataset import RecDataset
from semrec.data.split import leave_one_out


def make_dataset(reviews: bool = True) -> RecDataset:
    # u1: i1 i2 i3 i4 (train part i1 i2), u2: i4 i3 i2 (train part i4)
    return RecDataset(
        name="toy",
        user_ids=["u1", "u2"],
        item_ids=["i1", "i2", "i3", "i4"],
        users=[0, 0, 0, 0, 1, 1, 1],
        items=[0, 1, 2, 3, 3, 2, 1],
        timestamps=[1, 2, 3, 4, 1, 2, 3],
        item_text=[{"title": "Heat"}, {"title": "Fargo"}, {"title": "Alien"}, {}],
        user_text=[["Great  heist\nmovie.", "Loved it."], ["Too long."]] if reviews else None,
        source="toy.inter",
    )


@pytest.fixture
def toy():
    ds = make_dataset()
    return ds, leave_one_out(ds)


class CountingAnnotator:
    """Answers ``prompt`` with ``"A:" + prompt`` and records every call."""

    def __init__(self, version: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.version = version

    def complete(self, prompts: list[str]) -> list[str]:
        self.calls.append(list(prompts))
        return ["A:" + prompt for prompt in prompts]

    def cache_key(self) -> dict:
        return {"annotator": "counting", "version": self.version}


# --- requests ---------------------------------------------------------------------------


def test_preference_requests_list_training_titles(toy):
    ds, split = toy
    requests = annotation_requests("preference", ds, split, "History:\n{history}\nPrefs?")
    assert requests == {
        "u1": "History:\n1. Heat\n2. Fargo\nPrefs?",  # i3, i4 are the valid/test items
        "u2": "History:\n1. item i4\nPrefs?",  # no title -> external id
    }


def test_preference_requests_keep_last_max_history(toy):
    ds, split = toy
    requests = annotation_requests("preference", ds, split, "{history}", max_history=1)
    assert requests["u1"] == "1. Fargo"


def test_intention_requests_cover_train_valid_test_targets(toy):
    ds, split = toy
    requests = annotation_requests("intention", ds, split, "R: {reviews} | T: {title}")
    assert requests == {
        "u1:i2": "R: Great heist movie. Loved it. | T: Fargo",  # train target
        "u1:i3": "R: Great heist movie. Loved it. | T: Alien",  # valid
        "u1:i4": "R: Great heist movie. Loved it. | T: item i4",  # test
        "u2:i3": "R: Too long. | T: Alien",
        "u2:i2": "R: Too long. | T: Fargo",
    }


def test_intention_skips_users_without_reviews(toy):
    ds, split = toy
    ds.user_text[1] = []
    requests = annotation_requests("intention", ds, split, "{reviews}{title}")
    assert sorted(requests) == ["u1:i2", "u1:i3", "u1:i4"]


def test_intention_reviews_are_truncated(toy):
    ds, split = toy
    requests = annotation_requests("intention", ds, split, "{reviews}|{title}", max_review_chars=5)
    assert requests["u1:i2"] == "Great ...|Fargo"
    assert requests["u2:i2"] == "Too l ...|Fargo"


def test_default_templates_fill_every_placeholder(toy):
    ds, split = toy
    for kind in ("preference", "intention"):
        requests = annotation_requests(kind, ds, split)
        assert requests and all("{" not in prompt for prompt in requests.values())
    assert "1. Heat\n2. Fargo" in annotation_requests("preference", ds, split)["u1"]


def test_intention_without_reviews_suggests_item_text():
    ds = make_dataset(reviews=False)
    with pytest.raises(AnnotationError, match="no user reviews") as err:
        annotation_requests("intention", ds, leave_one_out(ds), "{reviews} {title}")
    assert "intention_source: item_text" in str(err.value)


def test_unknown_or_missing_placeholder_is_an_error(toy):
    ds, split = toy
    with pytest.raises(AnnotationError, match=r"unknown placeholder\(s\) \{user\}"):
        annotation_requests("preference", ds, split, "{history} {user}")
    with pytest.raises(AnnotationError, match=r"must contain \{reviews\}"):
        annotation_requests("intention", ds, split, "{title}")
    with pytest.raises(AnnotationError, match="unknown annotation kind 'mood'"):
        annotation_requests("mood", ds, split, "{history}")


def test_max_requests_is_a_seeded_ordered_subset(toy):
    ds, split = toy
    full = annotation_requests("intention", ds, split, "{reviews}{title}")
    picked = annotation_requests("intention", ds, split, "{reviews}{title}", 3, seed=7)
    again = annotation_requests("intention", ds, split, "{reviews}{title}", 3, seed=7)
    assert picked == again and len(picked) == 3
    assert list(picked) == [key for key in full if key in picked]


def test_annotation_keys(toy):
    ds, _ = toy
    assert annotation_keys("preference", ds) == {"u1", "u2"}
    assert annotation_keys("intention", ds) == {
        "u1:i1", "u1:i2", "u1:i3", "u1:i4", "u2:i4", "u2:i3", "u2:i2"
    }  # fmt: skip


# --- store ------------------------------------------------------------------------------


def test_annotate_calls_annotator_only_for_uncached_prompts(tmp_path):
    store = AnnotationStore("preference", tmp_path)
    requests = {"u1": "p1", "u2": "p2", "u3": "p1"}  # u3 shares u1's prompt
    first = CountingAnnotator()
    seen: list[tuple[int, int]] = []
    table = annotate(
        "preference",
        requests,
        first,
        store,
        batch_size=1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert table == {"u1": "A:p1", "u2": "A:p2", "u3": "A:p1"}
    assert first.calls == [["p1"], ["p2"]]
    assert seen == [(0, 3), (2, 3), (3, 3)]

    second = CountingAnnotator()
    more = {**requests, "u4": "p4"}
    assert annotate("preference", more, second, AnnotationStore("preference", tmp_path)) == {
        **table,
        "u4": "A:p4",
    }
    assert second.calls == [["p4"]]
    assert annotate("preference", more, second, store) and len(second.calls) == 1

    other_settings = CountingAnnotator(version=2)  # different cache_key: nothing reused
    annotate("preference", {"u1": "p1"}, other_settings, store)
    assert other_settings.calls == [["p1"]]


def test_load_annotations_needs_every_request_cached(tmp_path):
    store = AnnotationStore("intention", tmp_path)
    annotator = CountingAnnotator()
    assert load_annotations("intention", {"u1:i1": "p"}, annotator, store) is None
    annotate("intention", {"u1:i1": "p"}, annotator, store)
    assert load_annotations("intention", {"u1:i1": "p"}, annotator, store) == {"u1:i1": "A:p"}
    assert load_annotations("intention", {"u1:i1": "p", "u2:i1": "q"}, annotator, store) is None
    assert annotator.calls == [["p"]]


def test_store_recovers_from_a_torn_last_line(tmp_path):
    store = AnnotationStore("preference", tmp_path)
    annotator = CountingAnnotator()
    annotate("preference", {"u1": "p1", "u2": "p2"}, annotator, store, batch_size=1)
    whole = store.path.read_bytes()
    torn = json.dumps({"hash": prompt_hash(annotator.cache_key(), "p3"), "text": "A:p3"})
    store.path.write_bytes(whole + torn[:20].encode())  # killed mid-write

    fresh = AnnotationStore("preference", tmp_path)
    assert len(fresh.load()) == 2
    again = CountingAnnotator()
    table = annotate("preference", {"u1": "p1", "u2": "p2", "u3": "p3"}, again, fresh)
    assert again.calls == [["p3"]]
    assert table["u3"] == "A:p3"
    lines = fresh.path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["u1", "u2", "u3"]


def test_store_keeps_a_whole_last_line_without_newline(tmp_path):
    store = AnnotationStore("preference", tmp_path)
    annotator = CountingAnnotator()
    annotate("preference", {"u1": "p1"}, annotator, store)
    store.path.write_bytes(store.path.read_bytes().rstrip(b"\n"))
    fresh = AnnotationStore("preference", tmp_path)
    annotate("preference", {"u1": "p1", "u2": "p2"}, annotator, fresh)
    assert annotator.calls == [["p1"], ["p2"]]
    assert len(fresh.path.read_text().splitlines()) == 2


def test_store_rejects_a_corrupt_middle_line(tmp_path):
    store = AnnotationStore("preference", tmp_path)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text('{"hash": "h1", "text": "a"}\nnot json\n{"hash": "h2", "text": "b"}\n')
    with pytest.raises(AnnotationError, match=r"preference\.jsonl:2: corrupt cache entry"):
        store.load()


def test_annotator_returning_wrong_count_is_an_error(tmp_path):
    class Short(CountingAnnotator):
        def complete(self, prompts):
            return []

    with pytest.raises(AnnotationError, match="returned 0 texts for 1 prompts"):
        annotate("preference", {"u1": "p"}, Short(), AnnotationStore("preference", tmp_path))


# --- jsonl annotator --------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_annotator_reads_one_kind(tmp_path, toy):
    ds, _ = toy
    path = write_lines(
        tmp_path / "ann.jsonl",
        [
            '{"kind": "preference", "key": "u1", "text": "likes crime"}',
            "",
            '{"kind": "intention", "key": "u1:i2", "text": "a heist film"}',
            '{"kind": "preference", "key": "u2", "text": "likes sci-fi"}',
        ],
    )
    annotator = ANNOTATORS.get("jsonl")(path=path)
    keys = annotation_keys("preference", ds)
    expected = {"u1": "likes crime", "u2": "likes sci-fi"}
    assert annotator.lookup("preference", keys) == expected
    store = AnnotationStore("preference", tmp_path / "cache")
    assert annotate("preference", {}, annotator, store, known_keys=keys) == expected
    assert not store.path.exists()
    with pytest.raises(AnnotationError, match="cannot answer prompts"):
        annotator.complete(["p"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"kind": "preference", "key": "u1"', "not valid JSON"),
        ('["preference", "u1", "x"]', "expected a JSON object"),
        ('{"kind": "preference", "key": 1, "text": "x"}', "field 'key' must be a string"),
    ],
)
def test_jsonl_annotator_names_the_malformed_line(tmp_path, line, message):
    good = '{"kind": "preference", "key": "u1", "text": "x"}'
    path = write_lines(tmp_path / "ann.jsonl", [good, line])
    with pytest.raises(AnnotationError, match=rf"ann\.jsonl:2: {message}"):
        JsonlAnnotator(path).lookup("preference", {"u1"})


def test_jsonl_annotator_rejects_unknown_and_duplicate_keys(tmp_path, toy):
    ds, _ = toy
    lines = [f'{{"kind": "intention", "key": "u{n}:i9", "text": "x"}}' for n in range(7)]
    path = write_lines(tmp_path / "ann.jsonl", lines)
    with pytest.raises(AnnotationError) as err:
        JsonlAnnotator(path).lookup("intention", annotation_keys("intention", ds))
    message = str(err.value)
    assert str(path) in message and "7 intention key(s) are not in the dataset" in message
    assert "'u0:i9', 'u1:i9', 'u2:i9', 'u3:i9', 'u4:i9' and 2 more" in message

    twice = '{"kind": "preference", "key": "u1", "text": "x"}'
    path = write_lines(tmp_path / "dup.jsonl", [twice, twice])
    with pytest.raises(AnnotationError, match=r"dup\.jsonl:2: duplicate preference key 'u1'"):
        JsonlAnnotator(path).lookup("preference", {"u1"})
    with pytest.raises(AnnotationError, match="does not exist"):
        JsonlAnnotator(tmp_path / "missing.jsonl")


# --- openai_compatible against a local stub ----------------------------------------------


class StubServer:
    """A chat-completions stub on 127.0.0.1 that replays scripted statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.received.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                status = stub.statuses.pop(0) if stub.statuses else 200
                if status == 200:
                    prompt = body["messages"][-1]["content"]
                    reply = {"choices": [{"message": {"content": f" echo {prompt} "}}]}
                else:
                    reply = {"error": {"message": "nope"}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def client(url: str, **kwargs) -> OpenAICompatibleAnnotator:
    options = {"api_key_env": "SEMREC_TEST_KEY", "timeout": 5, "retry_wait": 0.0, **kwargs}
    return ANNOTATORS.get("openai_compatible")(model="stub-model", base_url=url + "/", **options)


def test_openai_compatible_sends_chat_completions(monkeypatch):
    monkeypatch.setenv("SEMREC_TEST_KEY", "sk-test")
    with StubServer([]) as stub:
        texts = client(stub.url, max_tokens=12, temperature=0.5).complete(["hi", "there"])
    assert texts == ["echo hi", "echo there"]
    first = stub.received[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == "Bearer sk-test"
    assert first["body"] == {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "temperature": 0.5,
    }


def test_openai_compatible_retries_server_errors_then_fails(monkeypatch):
    monkeypatch.setenv("SEMREC_TEST_KEY", "sk-test")
    with StubServer([503, 200]) as stub:
        assert client(stub.url, max_retries=1).complete(["a"]) == ["echo a"]
    assert len(stub.received) == 2
    with StubServer([500, 500, 500]) as stub:
        with pytest.raises(AnnotationError, match=r"/v1/chat/completions failed with HTTP 500"):
            client(stub.url, max_retries=1).complete(["a"])
    assert len(stub.received) == 2


def test_openai_compatible_does_not_retry_client_errors(monkeypatch):
    monkeypatch.setenv("SEMREC_TEST_KEY", "sk-wrong")
    with StubServer([401]) as stub:
        with pytest.raises(AnnotationError) as err:
            client(stub.url).complete(["a"])
    assert f"POST {stub.url}/chat/completions failed with HTTP 401" in str(err.value)
    assert len(stub.received) == 1


def test_openai_compatible_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("SEMREC_TEST_KEY", raising=False)
    with pytest.raises(AnnotationError, match="environment variable SEMREC_TEST_KEY"):
        client("http://127.0.0.1:9").complete(["a"])
    assert client("http://127.0.0.1:9").complete([]) == []  # no prompt, no key needed


def test_openai_compatible_unreachable_server_fails_after_retries(monkeypatch):
    monkeypatch.setenv("SEMREC_TEST_KEY", "sk-test")
    with StubServer([]) as stub:
        url = stub.url  # a port that was just free and is closed again below
    with pytest.raises(AnnotationError, match=r"failed after 2 attempt\(s\)"):
        client(url, max_retries=1).complete(["a"])


# --- hf_local ---------------------------------------------------------------------------


def test_hf_local_with_tiny_llama_returns_one_text_per_prompt():
    from semrec.models.backbone import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=32)
    annotator = LocalModelAnnotator("tiny", max_new_tokens=4, backbone=(model, tokenizer))
    prompts = ["what will the user buy next", "history", "the user liked this item"]
    texts = annotator.complete(prompts)
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts)
    assert all(len(text.split()) <= 4 for text in texts)  # prompt stripped, 4 new tokens max
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    # left padding: a prompt's answer does not depend on its batch mates (greedy)
    assert annotator.complete(prompts[1:2]) == texts[1:2]
    assert annotator.cache_key()["model"] == "tiny"


def test_registered_annotators():
    assert {"hf_local", "openai_compatible", "jsonl"} <= set(ANNOTATORS.names())
    default = LocalModelAnnotator()  # the model loads lazily, on the first complete()
    assert default.cache_key() == {
        "annotator": "hf_local",
        "model": "embedded",
        "max_new_tokens": 96,
        "system_prompt": None,
        "decoding": "greedy",
    }
    assert default._backbone is None


def test_hf_local_wraps_prompts_in_the_chat_template():
    from semrec.models.backbone import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant :{% endif %}"
    )
    model = tiny_llama(len(tokenizer), hidden_size=32)
    annotator = LocalModelAnnotator(
        "tiny", max_new_tokens=3, system_prompt="be brief", backbone=(model, tokenizer)
    )
    assert annotator._chat_text(tokenizer, "the item") == (
        "<s> system : be brief <s> user : the item <s> assistant :"
    )
    texts = annotator.complete(["the item", "what is next"])
    assert len(texts) == 2 and all(len(text.split()) <= 3 for text in texts)
