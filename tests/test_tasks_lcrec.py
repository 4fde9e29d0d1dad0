"""LC-Rec alignment tasks (MUT, ASY, ITE, PER): exact prompts, skips, data errors, mixtures."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from semrec.config import load_config
from semrec.data import Example, RecDataset, leave_one_out
from semrec.tasks import (
    TASKS,
    HistoryIntentionToItemTask,
    HistoryToDescriptionTask,
    HistoryToTitleTask,
    IntentionToItemTask,
    PreferenceTask,
    Sample,
    SequentialTask,
    SIDToTextTask,
    TaskContext,
    TaskDataError,
    TextToSIDTask,
    TitleHistoryTask,
    build_mixture,
)
from semrec.tasks.intention import derived_intention

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

TOY_STORY = "Toy Story follows a cowboy doll threatened by a new spaceman toy."
ITEM_TEXT = [
    {
        "title": "Toy Story",
        "description": TOY_STORY,
        "categories": "Animation, Comedy",
        "year": "1995",
    },
    {"title": "Heat", "categories": "Crime", "year": "1995"},
    {"title": "  ", "description": "A quiet   film about nothing."},
    {},
]
SIDS = ["<a_1><b_2>", "<a_1><b_3>", "<a_2><b_1>", "<a_3><b_1>"]


def lcrec_context(
    item_text: list[dict[str, str]] | None = None,
    annotations: dict[str, dict[str, str]] | None = None,
) -> TaskContext:
    """Two users over four items (SIDs in ``SIDS``).

    Item 0 has title, description, categories and year; item 1 a title, categories and
    year; item 2 only a description (its title is blank); item 3 no text at all.
    Sequences: u0 0 1 2 3 1, u1 1 0 3 0. Training examples: (u0, (0,), 1),
    (u0, (0, 1), 2), (u1, (1,), 0); training parts: u0 0 1 2, u1 1 0.
    """
    sequences = {"u0": [0, 1, 2, 3, 1], "u1": [1, 0, 3, 0]}
    users, items, stamps = [], [], []
    for u, seq in enumerate(sequences.values()):
        for t, item in enumerate(seq):
            users.append(u)
            items.append(item)
            stamps.append(10 + t)
    ds = RecDataset(
        name="films",
        user_ids=list(sequences),
        item_ids=[f"i{i}" for i in range(4)],
        users=users,
        items=items,
        timestamps=stamps,
        item_text=[dict(text) for text in (ITEM_TEXT if item_text is None else item_text)],
        source="films.inter",
    )
    return TaskContext(ds, leave_one_out(ds), list(SIDS), annotations=annotations)


INTENTIONS = {"intention": {"u0:i1": "Something  tense\nwith a heist", "u1:i0": "A family film"}}


def test_fixture_split_is_what_the_docstring_says() -> None:
    ctx = lcrec_context()
    assert ctx.split.train == [Example(0, (0,), 1), Example(0, (0, 1), 2), Example(1, (1,), 0)]
    assert [s.tolist() for s in ctx.split.train_sequences] == [[0, 1, 2], [1, 0]]
    assert ctx.split.test[0] == Example(0, (0, 1, 2, 3), 1)


def test_all_lcrec_names_resolve_in_the_registry() -> None:
    expected = {
        "mut_text2sid": TextToSIDTask,
        "mut_sid2text": SIDToTextTask,
        "asy_title": HistoryToTitleTask,
        "asy_description": HistoryToDescriptionTask,
        "asy_title_history": TitleHistoryTask,
        "ite_intention": IntentionToItemTask,
        "ite_history_intention": HistoryIntentionToItemTask,
        "per_preference": PreferenceTask,
    }
    for name, cls in expected.items():
        assert TASKS.get(name) is cls
        assert cls.name == name
        assert len(cls.templates) >= 4


def test_context_annotations_default_to_none() -> None:
    ctx = lcrec_context()
    assert TaskContext(ctx.dataset, ctx.split, ctx.sids).annotations is None


# ---------------------------------------------------------------- MUT


def test_text2sid_paper_template_exactly() -> None:
    ctx = lcrec_context()
    task = TextToSIDTask(templates=[TextToSIDTask.templates[0]])
    samples = task.train_samples(ctx, random.Random(0))
    assert samples == [
        Sample(
            "mut_text2sid",
            'An item is called "Toy Story" and described as "Toy Story follows a cowboy doll '
            'threatened by a new spaceman toy.". Can you tell me which item it is?',
            "<a_1><b_2>",
            0,
        )
    ]
    # items 1 and 2 lack a field the only template needs, item 3 has no text
    assert task.skipped == 3


def test_text2sid_uses_the_variants_each_item_has_text_for() -> None:
    ctx = lcrec_context()
    task = TextToSIDTask(
        templates=["T: {title}", "D: {description}", "TD: {title} | {description}"]
    )
    seen = Counter()
    for seed in range(40):
        samples = task.train_samples(ctx, random.Random(seed))
        assert task.skipped == 1  # item 3
        assert [s.target_item for s in samples] == [0, 1, 2]
        assert [s.response for s in samples] == SIDS[:3]
        assert samples[1].prompt == "T: Heat"
        assert samples[2].prompt == "D: A quiet film about nothing."
        seen[samples[0].prompt] += 1
    assert set(seen) == {
        "T: Toy Story",
        f"D: {TOY_STORY}",
        f"TD: Toy Story | {TOY_STORY}",
    }


def test_text2sid_draws_the_variant_before_the_template() -> None:
    # two title templates and one description template: item 0 gets each variant about
    # half the time (drawing a template uniformly would give the title variant 2/3)
    ctx = lcrec_context()
    task = TextToSIDTask(templates=["T1 {title}", "T2 {title}", "D {description}"])
    rng = random.Random(0)
    kinds = Counter(task.train_samples(ctx, rng)[0].prompt[0] for _ in range(2000))
    assert abs(kinds["D"] - 1000) < 100  # 4.5 standard deviations


def test_text2sid_rejects_templates_with_other_placeholders() -> None:
    with pytest.raises(ValueError, match=r"template 1 .*\{sid\}"):
        TextToSIDTask(templates=["{title}", "{sid}"])
    with pytest.raises(ValueError, match="template 0"):
        TextToSIDTask(templates=["no placeholder"])


def test_mut_without_any_item_text_names_the_fields() -> None:
    ctx = lcrec_context(item_text=[{"year": "1995"}, {}, {}, {}])
    for task in (TextToSIDTask(), SIDToTextTask()):
        with pytest.raises(TaskDataError) as info:
            task.check(ctx)
        message = str(info.value)
        assert "'title' or 'description'" in message
        assert repr(task.name) in message and "'films'" in message and "year" in message
    only_descriptions = TextToSIDTask(templates=["D {description}"])
    ctx = lcrec_context(item_text=[{"title": "Heat"}, {}, {}, {}])
    with pytest.raises(TaskDataError, match="needs the item field 'description'"):
        only_descriptions.check(ctx)


def test_sid2text_exactly() -> None:
    ctx = lcrec_context()
    task = SIDToTextTask(templates=["What is {sid}?"])
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample(
            "mut_sid2text",
            "What is <a_1><b_2>?",
            "title: Toy Story; description: Toy Story follows a cowboy doll threatened by a "
            "new spaceman toy.",
        ),
        Sample("mut_sid2text", "What is <a_1><b_3>?", "Heat"),
        Sample("mut_sid2text", "What is <a_2><b_1>?", "description: A quiet film about nothing."),
    ]
    assert task.skipped == 1


def test_sid2text_paper_template_exactly() -> None:
    ctx = lcrec_context()
    samples = SIDToTextTask(templates=[SIDToTextTask.templates[0]]).train_samples(
        ctx, random.Random(0)
    )
    assert samples[1].prompt == (
        "Please tell me what item <a_1><b_3> is called, along with a brief description of it."
    )


# ---------------------------------------------------------------- ASY


def test_asy_title_exactly_and_skips_untitled_targets() -> None:
    ctx = lcrec_context()
    task = HistoryToTitleTask(templates=["H: {history} -> title?"])
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample("asy_title", "H: <a_1><b_2> -> title?", "Heat", user=0),
        Sample("asy_title", "H: <a_1><b_3> -> title?", "Toy Story", user=1),
    ]
    assert task.skipped == 1  # the target of (u0, (0, 1), 2) has no title
    first = HistoryToTitleTask(templates=[HistoryToTitleTask.templates[0]])
    assert first.train_samples(ctx, random.Random(0))[0].prompt == (
        "Based on the user's historical interactions: <a_1><b_2>, try to predict the title of "
        "the item that the user may need next."
    )


def test_asy_description_exactly() -> None:
    ctx = lcrec_context()
    task = HistoryToDescriptionTask(templates=[HistoryToDescriptionTask.templates[0]])
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample(
            "asy_description",
            "Here is the item interaction history of the user: <a_1><b_2>, <a_1><b_3>. Please "
            "tell me what features they expect from their next item.",
            "A quiet film about nothing.",
            user=0,
        ),
        Sample(
            "asy_description",
            "Here is the item interaction history of the user: <a_1><b_3>. Please tell me what "
            "features they expect from their next item.",
            TOY_STORY,
            user=1,
        ),
    ]
    assert task.skipped == 1


def test_asy_description_can_predict_another_field() -> None:
    ctx = lcrec_context()
    task = HistoryToDescriptionTask(field="categories", templates=["{history}"])
    samples = task.train_samples(ctx, random.Random(0))
    assert [(s.prompt, s.response) for s in samples] == [
        ("<a_1><b_2>", "Crime"),
        ("<a_1><b_3>", "Animation, Comedy"),
    ]
    with pytest.raises(TaskDataError, match="'asy_description' needs the item field 'brand'"):
        HistoryToDescriptionTask(field="brand").check(ctx)
    HistoryToDescriptionTask(field="categories").check(ctx)


def test_asy_title_history_eval_prompt_uses_titles_and_sids_for_untitled_items() -> None:
    ctx = lcrec_context()
    task = TitleHistoryTask()
    assert task.eval_samples(ctx, ctx.split.test)[0] == Sample(
        "asy_title_history",
        'Given the title sequence of user historical interactive items: "Toy Story", "Heat", '
        "<a_2><b_1>, <a_3><b_1>, can you recommend a suitable next item for the user?",
        "<a_1><b_3>",
        1,
        user=0,
    )


def test_asy_title_history_train_samples_exactly() -> None:
    ctx = lcrec_context()
    task = TitleHistoryTask(templates=["Titles: {titles}"])
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample("asy_title_history", 'Titles: "Toy Story"', "<a_1><b_3>", 1, 0),
        Sample("asy_title_history", 'Titles: "Toy Story", "Heat"', "<a_2><b_1>", 2, 0),
        Sample("asy_title_history", 'Titles: "Heat"', "<a_1><b_2>", 0, 1),
    ]


def test_max_samples_per_epoch_draws_an_ordered_random_subset() -> None:
    ctx = lcrec_context()
    task = TitleHistoryTask(templates=["{titles}"], max_samples_per_epoch=2)
    everything = TitleHistoryTask(templates=["{titles}"]).train_samples(ctx, random.Random(0))
    subsets = set()
    for seed in range(20):
        samples = task.train_samples(ctx, random.Random(seed))
        assert len(samples) == 2
        assert [everything.index(s) for s in samples] == sorted(
            everything.index(s) for s in samples
        )
        subsets.add(tuple(s.target_item for s in samples))
    assert len(subsets) == 3  # every 2-of-3 subset shows up
    # a limit above the number of pairs keeps them all
    big = HistoryToTitleTask(templates=["{history}"], max_samples_per_epoch=50)
    assert len(big.train_samples(ctx, random.Random(0))) == 2
    with pytest.raises(ValueError, match="max_samples_per_epoch must be >= 1"):
        HistoryToTitleTask(max_samples_per_epoch=0)


@pytest.mark.parametrize("name", ["seq", "mut_text2sid", "mut_sid2text", "asy_title"])
def test_every_task_honours_max_samples_per_epoch(name: str) -> None:
    ctx = lcrec_context()
    everything = TASKS.get(name)().train_samples(ctx, random.Random(0))
    assert len(everything) >= 2
    capped = TASKS.get(name)(max_samples_per_epoch=1).train_samples(ctx, random.Random(0))
    assert len(capped) == 1
    assert capped[0].response in {s.response for s in everything}
    with pytest.raises(ValueError, match=f"task '{name}': max_samples_per_epoch must be >= 1"):
        TASKS.get(name)(max_samples_per_epoch=0)


# ---------------------------------------------------------------- ITE


def test_ite_without_annotations_says_which_command_makes_them() -> None:
    ctx = lcrec_context()
    for task in (IntentionToItemTask(), HistoryIntentionToItemTask()):
        with pytest.raises(TaskDataError) as info:
            task.check(ctx)
        message = str(info.value)
        assert "intention annotations" in message and repr(task.name) in message
        assert "semrec annotate --config" in message and "--kind intention" in message
        assert "intention_source: item_text" in message
    # an annotation file without the intention kind is just as missing
    with pytest.raises(TaskDataError, match="--kind intention"):
        IntentionToItemTask().check(lcrec_context(annotations={"preference": {"u0": "x"}}))
    with pytest.raises(TaskDataError, match="--kind intention"):
        build_mixture([(SequentialTask(), 1.0), (IntentionToItemTask(), 1.0)], ctx, random.Random())


def test_ite_intention_exactly() -> None:
    ctx = lcrec_context(annotations=INTENTIONS)
    task = IntentionToItemTask(templates=["Q: {intention}"])
    task.check(ctx)
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample("ite_intention", "Q: Something tense with a heist", "<a_1><b_3>", 1, 0),
        Sample("ite_intention", "Q: A family film", "<a_1><b_2>", 0, 1),
    ]
    assert task.skipped == 1  # no intention for u0:i2
    paper = IntentionToItemTask(templates=[IntentionToItemTask.templates[0]])
    assert paper.train_samples(ctx, random.Random(0))[1].prompt == (
        'Suppose you are a search engine, now a user searches that: "A family film", can you '
        "select an item to respond to the user's query?"
    )


def test_ite_history_intention_exactly() -> None:
    ctx = lcrec_context(annotations=INTENTIONS)
    task = HistoryIntentionToItemTask()
    example = ctx.split.train[0]
    assert task.prompt(ctx, example, 0) == (
        "As a recommender system, you are assisting a user who has recently interacted with "
        "the following items: <a_1><b_2>. The user expresses a desire to obtain another item "
        'with the following characteristics: "Something tense with a heist". Please recommend '
        "an item that meets these criteria."
    )
    custom = HistoryIntentionToItemTask(templates=["{history} | {intention}"])
    assert custom.train_samples(ctx, random.Random(0)) == [
        Sample("ite_history_intention", "<a_1><b_2> | Something tense with a heist", SIDS[1], 1, 0),
        Sample("ite_history_intention", "<a_1><b_3> | A family film", SIDS[0], 0, 1),
    ]


def test_ite_eval_prompt_without_intention_names_the_key() -> None:
    ctx = lcrec_context(annotations=INTENTIONS)
    with pytest.raises(TaskDataError, match=r"user 'u0' and item 'i3' .*\['u0:i3'\]"):
        IntentionToItemTask().eval_samples(ctx, ctx.split.valid)


def test_ite_annotations_for_another_dataset_are_reported() -> None:
    ctx = lcrec_context(annotations={"intention": {"A17:B4": "something"}})
    with pytest.raises(TaskDataError) as info:
        IntentionToItemTask().train_samples(ctx, random.Random(0))
    assert "'A17:B4'" in str(info.value) and "'u0:i1'" in str(info.value)


def test_derived_intention_uses_year_categories_description_but_not_the_title() -> None:
    ds = lcrec_context().dataset
    assert [derived_intention(ds, i) for i in range(4)] == [
        "I am looking for an item from 1995 in the categories Animation, Comedy that fits this "
        "description: this item follows a cowboy doll threatened by a new spaceman toy.",
        "I am looking for an item from 1995 in the categories Crime.",
        "I am looking for an item that fits this description: A quiet film about nothing.",
        "",
    ]
    long = {"title": "Up", "description": " ".join(f"w{i}" for i in range(40)) + " Up, up!"}
    ds.item_text[3] = long
    assert derived_intention(ds, 3) == (
        "I am looking for an item that fits this description: "
        + " ".join(f"w{i}" for i in range(30))
        + " ..."
    )
    ds.item_text[3] = {"title": "Up", "description": "Up goes UP, not upward."}
    assert derived_intention(ds, 3) == (
        "I am looking for an item that fits this description: this item goes this item, not upward."
    )


def test_ite_from_item_text_needs_no_annotations() -> None:
    ctx = lcrec_context()
    task = IntentionToItemTask(intention_source="item_text", templates=["Q: {intention}"])
    task.check(ctx)
    assert task.requires == ("item_text",)
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample("ite_intention", f"Q: {derived_intention(ctx.dataset, 1)}", SIDS[1], 1, 0),
        Sample("ite_intention", f"Q: {derived_intention(ctx.dataset, 2)}", SIDS[2], 2, 0),
        Sample("ite_intention", f"Q: {derived_intention(ctx.dataset, 0)}", SIDS[0], 0, 1),
    ]
    assert all("Toy Story" not in s.prompt for s in task.train_samples(ctx, random.Random(1)))
    bare = lcrec_context(item_text=[{"title": "Heat"}, {}, {}, {}])
    with pytest.raises(TaskDataError, match="'year' or 'categories' or 'description'"):
        task.check(bare)
    with pytest.raises(ValueError, match="intention_source must be"):
        IntentionToItemTask(intention_source="reviews")  # type: ignore[arg-type]


# ---------------------------------------------------------------- PER


def test_per_preference_exactly() -> None:
    annotations = {"preference": {"u0": "Likes  animated\ncomedies.", "u7": "unknown user"}}
    ctx = lcrec_context(annotations=annotations)
    task = PreferenceTask(templates=["P: {history}"])
    task.check(ctx)
    assert task.train_samples(ctx, random.Random(0)) == [
        Sample(
            "per_preference",
            "P: <a_1><b_2>, <a_1><b_3>, <a_2><b_1>",
            "Likes animated comedies.",
            user=0,
        )
    ]
    assert task.skipped == 1
    short = PreferenceTask(templates=[PreferenceTask.templates[0]], max_history=2)
    assert short.train_samples(ctx, random.Random(0))[0].prompt == (
        "Utilizing the ordered list of the user's historical interaction items as a reference, "
        "please make an informed estimation of the user's preferences. The historical "
        "interactions are as follows: <a_1><b_3>, <a_2><b_1>."
    )


def test_per_without_annotations_names_the_kind_and_command() -> None:
    for table in (None, INTENTIONS):
        with pytest.raises(TaskDataError) as info:
            PreferenceTask().check(lcrec_context(annotations=table))
        message = str(info.value)
        assert "preference annotations" in message and "annotations['preference']" in message
        assert "semrec annotate --config" in message and "--kind preference" in message
    with pytest.raises(TaskDataError, match="keys look like 'nobody'"):
        PreferenceTask().train_samples(
            lcrec_context(annotations={"preference": {"nobody": "x"}}), random.Random(0)
        )


# ---------------------------------------------------------------- sampling and mixtures


def test_templates_are_sampled_with_the_rng() -> None:
    ctx = lcrec_context(annotations=INTENTIONS)
    tasks = [
        TextToSIDTask(),
        SIDToTextTask(),
        HistoryToTitleTask(),
        TitleHistoryTask(),
        IntentionToItemTask(),
        HistoryIntentionToItemTask(),
    ]
    for task in tasks:
        assert task.train_samples(ctx, random.Random(3)) == task.train_samples(
            ctx, random.Random(3)
        )
        rng = random.Random(3)
        prompts = {s.prompt for _ in range(100) for s in task.train_samples(ctx, rng)}
        if task.name == "mut_text2sid":
            assert len(prompts) == 9 + 3 + 3  # item 0: all, item 1: title-only, 2: description-only
        else:
            assert len(prompts) == len(task.templates) * len(task.train_samples(ctx, rng))


def test_build_mixture_weights_work_with_lcrec_tasks() -> None:
    ctx = lcrec_context(annotations=INTENTIONS)
    tasks = [
        (SequentialTask(), 1.0),
        (TextToSIDTask(), 2.0),
        (HistoryToTitleTask(), 0.5),
        (IntentionToItemTask(), 1.0),
        (PreferenceTask(), 1.0),
    ]
    with pytest.raises(TaskDataError, match="--kind preference"):
        build_mixture(tasks, ctx, random.Random(0))
    ctx.annotations = {**INTENTIONS, "preference": {"u1": "Crime fan."}}
    mixture = build_mixture(tasks, ctx, random.Random(0))
    assert Counter(s.task for s in mixture) == {
        "seq": 3,
        "mut_text2sid": 6,  # 3 items with text, twice
        "asy_title": 1,  # half of 2
        "ite_intention": 2,
        "per_preference": 1,
    }
    assert Counter(s.target_item for s in mixture if s.task == "mut_text2sid") == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("variant", ["seq", "mut", "asy", "ite"])
def test_table4_configs_load_and_name_their_tasks(variant: str) -> None:
    config = load_config(EXPERIMENTS / f"lcrec_table4_{variant}.yaml")
    names = [t.name for t in config.tasks]
    assert names[0] == "seq"  # the first recommendation task is the one evaluated
    families = {name.split("_")[0] for name in names}
    expected = {"seq": {"seq"}, "mut": {"seq", "mut"}, "asy": {"seq", "mut", "asy"}}
    assert families == expected.get(variant, {"seq", "mut", "asy", "ite"})
    quickstart = load_config(EXPERIMENTS / "quickstart_text.yaml")
    # the text-prompt quickstart's settings, but LC-Rec's text-based SIDs and only popularity
    differs = {
        "name": True,
        "tasks": True,
        "items": {"embedder"},
        "eval": {"baselines", "baseline_params"},
    }
    assert config.model_dump(exclude=differs) == quickstart.model_dump(exclude=differs)
    assert config.items.embedder.name == "text"
    for task in config.tasks:
        TASKS.get(task.name)(**task.params)  # the params are real constructor arguments
