"""TS-Rec: token clusters, semantic extraction and parsing, SA-Init, TS-Align tasks, configs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from semrec.annotate import (
    AnnotationError,
    AnnotationStore,
    FieldStatisticsExtractor,
    SemanticsParseError,
    TokenSemantics,
    annotate,
    parse_token_semantics,
    semantics_table,
    token_semantics_requests,
)
from semrec.annotate.token_semantics import DEFAULT_TEMPLATE, retry_prompt
from semrec.config import ConfigError, load_config
from semrec.data.dataset import RecDataset
from semrec.data.split import leave_one_out
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.semantic_init import keyword_subtokens, semantic_init
from semrec.models.vocabulary import add_sid_tokens
from semrec.tasks import TASKS, TaskContext, TaskDataError
from semrec.tokenizers.clusters import sample_clusters, token_clusters

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# four items with 2-level SIDs; <a_0> is shared by items 0 and 1, <b_1> by items 0 and 2
ITEM_TOKENS = [["<a_0>", "<b_1>"], ["<a_0>", "<b_2>"], ["<a_1>", "<b_1>"], ["<a_2>", "<b_0>"]]


@pytest.fixture
def movies() -> RecDataset:
    texts = [
        {"title": "Heat", "categories": "Action, Crime", "year": "1995"},
        {"title": "Ronin", "categories": "Action, Thriller", "year": "1998"},
        {"title": "Casablanca", "categories": "Drama, Romance", "year": "1942"},
        {"title": "Brazil", "categories": "Sci-Fi", "year": "1985", "description": "A clerk."},
    ]
    users, items = [], []
    for user in range(3):
        for step in range(4):
            users.append(user)
            items.append((user + step) % 4)
    return RecDataset(
        name="movies",
        users=torch.tensor(users),
        items=torch.tensor(items),
        timestamps=torch.arange(len(users)),
        user_ids=[f"u{u}" for u in range(3)],
        item_ids=[f"m{i}" for i in range(4)],
        item_text=texts,
    )


# ---------------------------------------------------------------------- clusters (Eq. 6)


def test_token_clusters_match_hand_built_fixture():
    assert token_clusters(ITEM_TOKENS) == {
        "<a_0>": [0, 1],
        "<b_1>": [0, 2],
        "<b_2>": [1],
        "<a_1>": [2],
        "<a_2>": [3],
        "<b_0>": [3],
    }


def test_token_clusters_count_an_item_once_per_token():
    assert token_clusters([["<a_0>", "<a_0>"]]) == {"<a_0>": [0]}


def test_sample_clusters_caps_size_and_is_stable_per_token():
    clusters = {"<a_0>": list(range(50)), "<a_1>": [3, 7]}
    sampled = sample_clusters(clusters, 10, seed=1)
    assert len(sampled["<a_0>"]) == 10
    assert set(sampled["<a_0>"]) <= set(range(50))
    assert sampled["<a_0>"] == sorted(sampled["<a_0>"])
    assert sampled["<a_1>"] == [3, 7]
    # a token's sample depends on the seed and the token only, not on the other clusters
    alone = sample_clusters({"<a_0>": list(range(50))}, 10, seed=1)
    assert alone["<a_0>"] == sampled["<a_0>"]
    assert sample_clusters(clusters, 10, seed=2)["<a_0>"] != sampled["<a_0>"]
    with pytest.raises(ValueError, match=">= 1"):
        sample_clusters(clusters, 0)


# ---------------------------------------------------------------------- extraction prompts


def test_requests_list_the_cluster_items_with_their_fields(movies):
    requests = token_semantics_requests(
        movies, token_clusters(ITEM_TOKENS), category="movie", max_description_chars=4
    )
    assert set(requests) == {"<a_0>", "<b_1>", "<b_2>", "<a_1>", "<a_2>", "<b_0>"}
    prompt = requests["<a_0>"]
    assert prompt.startswith("Role:\nYou are a Senior Product Content Analyst")
    assert "expertise in movie product classification" in prompt
    assert prompt.endswith(
        "Items:\n1. Title: Heat; Categories: Action, Crime; Year: 1995\n"
        "2. Title: Ronin; Categories: Action, Thriller; Year: 1998"
    )
    assert "Description: A cl ...; Categories: Sci-Fi" in requests["<a_2>"]
    assert "Keywords:" in DEFAULT_TEMPLATE  # the output format the parser reads


def test_request_templates_and_item_indices_are_checked(movies):
    clusters = token_clusters(ITEM_TOKENS)
    with pytest.raises(AnnotationError, match=r"must contain \{items\}"):
        token_semantics_requests(movies, clusters, "Describe {category}s.")
    with pytest.raises(AnnotationError, match="unknown placeholder"):
        token_semantics_requests(movies, clusters, "{items} {user}")
    with pytest.raises(AnnotationError, match=r"item indices \[9\] outside dataset 'movies'"):
        token_semantics_requests(movies, {"<a_0>": [0, 9]})


# ---------------------------------------------------------------------- parsing answers


def test_parse_plain_labelled_answer():
    parsed = parse_token_semantics(
        "Description: Crime films of the 1990s.\nKeywords: crime, heist, Los Angeles, 1990s, police"
    )
    assert parsed == TokenSemantics(
        "Crime films of the 1990s.", ("crime", "heist", "Los Angeles", "1990s", "police")
    )


def test_parse_markdown_bullets_and_duplicates():
    text = (
        "**Product Family Description:** Office chairs\nwith adjustable height.\n\n"
        "**Keywords:**\n- ergonomic\n- Office Chair\n- office chair\n* swivel\n1. lumbar support\n"
        "2. mesh; armrests\n\nThese keywords cover the family."
    )
    parsed = parse_token_semantics(text, min_keywords=3)
    assert parsed.description == "Office chairs with adjustable height."
    assert parsed.keywords == (
        "ergonomic",
        "Office Chair",
        "swivel",
        "lumbar support",
        "mesh",
        "armrests",
    )


def test_parse_json_answer():
    text = 'Sure!\n```json\n{"Description": "Pens.", "keywords": ["ink", "gel", "ballpoint"]}\n```'
    assert parse_token_semantics(text, min_keywords=3) == TokenSemantics(
        "Pens.", ("ink", "gel", "ballpoint")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("These are all action movies.", "no 'Keywords:' line"),
        ("Description: Films.\nKeywords: a, b", "2 keyword\\(s\\), fewer than the 3"),
        ("Keywords: a, b, c, d, e", "no description"),
        # a run-on sentence is not a keyword
        (
            "Description: x\nKeywords: this is a very long sentence and not a keyword, b",
            "1 keyword",
        ),
    ],
)
def test_parse_errors_say_what_is_missing(text, message):
    with pytest.raises(SemanticsParseError, match=message):
        parse_token_semantics(text, min_keywords=3 if "a, b" in text else 2)


def test_semantics_table_splits_usable_and_unusable():
    parsed, failed = semantics_table(
        {"<a_0>": "Description: d\nKeywords: x, y", "<a_1>": "no format"}, min_keywords=2
    )
    assert parsed == {"<a_0>": TokenSemantics("d", ("x", "y"))}
    assert failed == {"<a_1>": "the answer has no 'Keywords:' line"}


# ---------------------------------------------------------------------- annotate with retries


class ScriptedAnnotator:
    """Answers each prompt from a queue of answers per prompt prefix; records every prompt."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.prompts: list[str] = []

    def cache_key(self) -> dict:
        return {"annotator": "scripted"}

    def complete(self, prompts: list[str]) -> list[str]:
        self.prompts.extend(prompts)
        return [self.answers[p.split("\n")[0]].pop(0) for p in prompts]


GOOD = "Description: shared traits\nKeywords: a, b, c"


def test_unparseable_answers_are_asked_again_with_the_error(tmp_path):
    annotator = ScriptedAnnotator({"p1": ["rambling", GOOD], "p2": [GOOD]})
    store = AnnotationStore("token_semantics", tmp_path)
    check = lambda text: parse_token_semantics(text, min_keywords=3)  # noqa: E731
    table = annotate(
        "token_semantics",
        {"<a_0>": "p1", "<a_1>": "p2"},
        annotator,
        store,
        check=check,
        retry_prompt=retry_prompt,
        max_retries=1,
    )
    assert table == {"<a_0>": GOOD, "<a_1>": GOOD}
    assert annotator.prompts[:2] == ["p1", "p2"]
    assert annotator.prompts[2].startswith("p1\n\nA previous answer to this request could not be")
    assert "no 'Keywords:' line" in annotator.prompts[2]
    assert len(store.load()) == 2  # only usable answers are cached


def test_answers_unusable_after_retries_fail_but_keep_the_good_ones(tmp_path):
    store = AnnotationStore("token_semantics", tmp_path)
    check = lambda text: parse_token_semantics(text, min_keywords=3)  # noqa: E731
    annotator = ScriptedAnnotator({"p1": ["bad", "still bad"], "p2": [GOOD]})
    requests = {"<a_0>": "p1", "<a_1>": "p2"}
    with pytest.raises(
        AnnotationError, match=r"1 of 2 token_semantics answers .* <a_0>: the answer"
    ):
        annotate("token_semantics", requests, annotator, store, check=check, max_retries=1)
    assert list(store.load().values()) == [GOOD]
    # the rerun asks only for the failed key; keep_invalid then caches the raw answer
    again = ScriptedAnnotator({"p1": ["bad"]})
    table = annotate("token_semantics", requests, again, store, check=check, keep_invalid=True)
    assert again.prompts == ["p1"]
    assert table == {"<a_0>": "bad", "<a_1>": GOOD}


# ---------------------------------------------------------------------- field statistics


def test_field_statistics_describes_shared_fields(movies):
    extractor = FieldStatisticsExtractor(category="movie", min_share=0.6)
    answer = extractor.describe(movies, [0, 1])
    parsed = parse_token_semantics(answer, min_keywords=3)
    assert parsed.description == (
        "A group of 2 movies mostly in the category Action from the 1990s. Examples: Heat, Ronin."
    )
    assert parsed.keywords[:2] == ("Action", "1990s")
    assert {"heat", "ronin"} <= set(parsed.keywords)
    assert set(extractor.summarize(movies, {"<a_0>": [0, 1], "<a_1>": [2]})) == {"<a_0>", "<a_1>"}
    with pytest.raises(AnnotationError, match="empty cluster"):
        extractor.describe(movies, [])
    # titles=False: no item name reaches the description or the keywords
    blind = FieldStatisticsExtractor(category="movie", min_share=0.6, titles=False)
    parsed = parse_token_semantics(blind.describe(movies, [0, 1]), min_keywords=2)
    assert parsed.description == "A group of 2 movies mostly in the category Action from the 1990s."
    assert parsed.keywords == ("Action", "1990s")


# ---------------------------------------------------------------------- SA-Init (Eq. 8-9)

LEVELS = [["<a_0>", "<a_1>", "<a_2>"], ["<b_0>", "<b_1>"]]
KEYWORDS = {"<a_0>": ["comedy", "drama"], "<a_1>": ["space war", "romance"], "<b_0>": ["drama"]}


def _model_with_sids(tied: bool):
    tokenizer = tiny_tokenizer(["comedy", "drama", "space", "war", "romance"])
    model = tiny_llama(len(tokenizer), tie_word_embeddings=tied)
    add_sid_tokens(model, tokenizer, [t for level in LEVELS for t in level], init="random")
    return model, tokenizer


def _tables(model) -> list[torch.Tensor]:
    tables = [model.get_input_embeddings().weight]
    if model.get_output_embeddings().weight is not tables[0]:
        tables.append(model.get_output_embeddings().weight)
    return tables


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("depth", [None, 1])
def test_sa_init_sets_exactly_the_intended_rows(tied, depth):
    model, tokenizer = _model_with_sids(tied)
    before = [t.detach().clone() for t in _tables(model)]
    report = semantic_init(model, tokenizer, LEVELS, KEYWORDS, depth=depth)

    row = tokenizer.convert_tokens_to_ids
    expected_words = {"<a_0>": ["comedy", "drama"], "<a_1>": ["space", "war", "romance"]}
    if depth is None:
        expected_words["<b_0>"] = ["drama"]
    assert set(report.initialised) == set(expected_words)
    assert report.without_keywords == ["<a_2>"] + (["<b_1>"] if depth is None else [])
    assert report.too_deep == ([] if depth is None else ["<b_0>", "<b_1>"])
    for old, new in zip(before, _tables(model), strict=True):
        changed = {row(token) for token in expected_words}
        for token, words in expected_words.items():
            mean = old[[row(w) for w in words]].mean(0)  # pretrained rows, read before init
            torch.testing.assert_close(new[row(token)], mean)
        untouched = [i for i in range(old.shape[0]) if i not in changed]
        assert torch.equal(new[untouched], old[untouched])
    if not tied:  # each table is filled from its own rows
        inp, out = (t[row("<a_0>")] for t in _tables(model))
        assert not torch.allclose(inp, out)


def test_keyword_subtokens_drop_separators_and_keep_multiword_keywords():
    tokenizer = tiny_tokenizer(["space", "war", "romance"])
    ids = keyword_subtokens(tokenizer, ["space war", "romance"])
    assert tokenizer.convert_ids_to_tokens(ids) == ["space", "war", "romance"]


def test_sa_init_rejects_unknown_tokens_and_sid_keywords():
    model, tokenizer = _model_with_sids(tied=True)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        semantic_init(model, tokenizer, [["<z_9>"]], {})
    with pytest.raises(ValueError, match="SID or out-of-range rows"):
        semantic_init(model, tokenizer, LEVELS, {"<a_0>": ["<b_1>"]})
    with pytest.raises(ValueError, match="depth"):
        semantic_init(model, tokenizer, LEVELS, KEYWORDS, depth=0)


def test_sa_init_under_lora_keeps_the_initialised_rows_trainable():
    from semrec.models.adapters import apply_lora

    model, tokenizer = _model_with_sids(tied=True)
    semantic_init(model, tokenizer, LEVELS, KEYWORDS)
    row = tokenizer.convert_tokens_to_ids("<a_0>")
    expected = model.get_input_embeddings().weight[row].detach().clone()
    sid_ids = tokenizer.convert_tokens_to_ids([t for level in LEVELS for t in level])
    peft_model = apply_lora(peft_model := model, sid_ids, r=2, alpha=4, target_modules=["q_proj"])
    ids = torch.tensor([[row]])
    torch.testing.assert_close(peft_model.get_input_embeddings()(ids)[0, 0], expected)


# ---------------------------------------------------------------------- TS-Align tasks


def _context(movies, semantics) -> TaskContext:
    split = leave_one_out(movies, max_history=3)
    return TaskContext(
        movies,
        split,
        ["".join(t) for t in ITEM_TOKENS],
        level_tokens=[["<a_0>", "<a_1>", "<a_2>"], ["<b_0>", "<b_1>", "<b_2>"]],
        token_semantics=semantics,
    )


SEMANTICS = {
    "<a_0>": TokenSemantics("Action films of the 1990s.", ("action", "1990s", "crime")),
    "<b_1>": TokenSemantics("Crime and romance.", ("crime", "romance", "drama")),
}


def test_semantic_to_token_prompts(movies):
    task = TASKS.get("ts_align_semantic_to_token")()
    samples = task.train_samples(_context(movies, SEMANTICS), random.Random(0))
    assert [(s.response, s.task) for s in samples] == [
        ("<a_0>", "ts_align_semantic_to_token"),
        ("<b_1>", "ts_align_semantic_to_token"),
    ]
    single = TASKS.get("ts_align_semantic_to_token")(templates=[task.templates[0]])
    first = single.train_samples(_context(movies, SEMANTICS), random.Random(0))[0]
    assert first.prompt == (
        "Identify the specific SID token shared by items that exhibit the following scope and "
        'characteristics: "Action films of the 1990s."'
    )
    assert first.target_item is None  # the response is one token, not an item


def test_token_to_semantic_prompts_and_level_filter(movies):
    task = TASKS.get("ts_align_token_to_semantic")(
        templates=[
            'Describe the typical scope and shared features of items associated with the token: "{token}"'
        ],
        levels=[1],
    )
    samples = task.train_samples(_context(movies, SEMANTICS), random.Random(0))
    assert [(s.prompt, s.response) for s in samples] == [
        (
            "Describe the typical scope and shared features of items associated with the "
            'token: "<b_1>"',
            "Crime and romance.",
        )
    ]


def test_ts_align_tasks_need_semantics_and_valid_templates(movies):
    task = TASKS.get("ts_align_token_to_semantic")()
    with pytest.raises(TaskDataError, match="--kind token_semantics"):
        task.check(_context(movies, None))
    with pytest.raises(TaskDataError, match=r"no SID token of levels \[2\]"):
        TASKS.get("ts_align_token_to_semantic")(levels=[2]).check(_context(movies, SEMANTICS))
    with pytest.raises(ValueError, match=r"must contain \{description\}"):
        TASKS.get("ts_align_semantic_to_token")(templates=["Which token is {token}?"])


def test_sid_to_title_task_answers_with_the_title_only(movies):
    task = TASKS.get("mut_sid2text")(
        fields=["title"], templates=['What is the title of item "{sid}"?']
    )
    samples = task.train_samples(_context(movies, SEMANTICS), random.Random(0))
    assert samples[3].prompt == 'What is the title of item "<a_2><b_0>"?'
    assert [s.response for s in samples] == ["Heat", "Ronin", "Casablanca", "Brazil"]
    with pytest.raises(ValueError, match="fields must be"):
        TASKS.get("mut_sid2text")(fields=["year"])


# ---------------------------------------------------------------------- configs


def test_table3_ablation_configs_differ_only_where_the_paper_does():
    full = load_config(EXPERIMENTS / "tsrec_ml100k.yaml")
    configs = {
        name: load_config(EXPERIMENTS / f"tsrec_ml100k{name}.yaml")
        for name in ("_no_sainit", "_no_tsalign", "_no_both")
    }
    ts_align = {"ts_align_semantic_to_token", "ts_align_token_to_semantic"}
    names = {key: {t.name for t in cfg.tasks} for key, cfg in configs.items()}
    assert full.model.semantic_init.enabled and ts_align <= {t.name for t in full.tasks}
    assert not configs["_no_sainit"].model.semantic_init.enabled
    assert names["_no_sainit"] == {t.name for t in full.tasks}
    assert configs["_no_tsalign"].model.semantic_init.enabled
    assert names["_no_tsalign"] == {t.name for t in full.tasks} - ts_align
    assert not configs["_no_both"].model.semantic_init.enabled
    assert names["_no_both"] == names["_no_tsalign"]
    non_align = [t for t in full.tasks if t.name not in ts_align]
    for key, cfg in configs.items():
        assert cfg.name == f"tsrec_ml100k{key}"  # own run directory, not the base's
        assert [t for t in cfg.tasks if t.name not in ts_align] == non_align
        assert cfg.train == full.train and cfg.eval == full.eval and cfg.items == full.items


def test_config_base_merges_and_rejects_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain: {epochs: 3, lr: 0.1}\ntasks: [{name: seq}]\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {lr: 0.5}\n")
    config = load_config(tmp_path / "b.yaml")
    assert (config.name, config.train.epochs, config.train.lr) == ("b", 3, 0.5)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(base of .*e.yaml\) does not exist"):
        load_config(tmp_path / "e.yaml")
