"""Amazon 2014/2018/2023 loaders, k-core with per-interaction reviews, writers and
``semrec convert``. Every fixture is written here, in the real on-disk format."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from semrec.cli import main
from semrec.config import ConfigError, DatasetConfig
from semrec.config.validation import _check_dataset_options
from semrec.data import DataError, RecDataset, amazon, kcore_filter, leave_one_out, load_dataset
from semrec.data.writers import convert, write_lcrec_json, write_minionerec_csv, write_recbole


def write_lines(path: Path, lines: list[str]) -> Path:
    """One record per line; gzipped when the name ends in .gz."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def r18(user: str, item: str, ts: int, rating: float = 5.0, **text: str) -> str:
    """A 2014/2018 review line."""
    return json.dumps(
        {"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts, **text}
    )


def r23(user: str, item: str, ts: int, rating: float = 5.0, **text: str) -> str:
    """A 2023 review line (timestamp in milliseconds; the item is the parent_asin)."""
    record = {"user_id": user, "parent_asin": item, "asin": f"{item}-v", "rating": rating}
    return json.dumps({**record, "timestamp": ts, "helpful_vote": 0, **text})


def sequences_by_id(ds: RecDataset) -> dict[str, list[str]]:
    return {
        ds.user_ids[u]: [ds.item_ids[i] for i in seq.tolist()]
        for u, seq in enumerate(ds.sequences())
    }


# --------------------------------------------------------------------------- formats


@pytest.fixture
def beauty2018(tmp_path: Path) -> Path:
    write_lines(
        tmp_path / "Beauty_5.json",
        [
            r18(
                "u1",
                "B1",
                100,
                5.0,
                summary="Love it",
                reviewText="Smells <i>great</i> &amp; lasts.",
            ),
            r18("u2", "B2", 200, 4.0, summary="Ok!", reviewText="Fine"),
            r18("u1", "B2", 100, 3.0, reviewText="Same second,<br/>later line"),
            r18("u1", "B3", 50, 1.0),
            r18("u2", "B1", 300, 2.0),
        ],
    )
    write_lines(
        tmp_path / "meta_Beauty.json",
        [
            json.dumps(
                {
                    "asin": "B1",
                    "title": "Rose &amp; Oud <b>Soap</b>",
                    "description": ["<p>Hand made.</p>", "Vegan"],
                    "brand": "Acme",
                    "category": ["Beauty", "Skin Care", "Beauty"],
                    "main_cat": "All Beauty",
                    "feature": ["Big", "Small"],
                    "price": "$12.99",
                    "also_buy": ["B2"],
                }
            ),
            json.dumps({"asin": "B2", "title": "Comb"}),
            json.dumps({"asin": "B2", "title": "A repeated line"}),
            json.dumps({"asin": "B9", "title": "Never reviewed"}),
            json.dumps({"asin": "B3", "title": "Brush", "description": []}),
        ],
    )
    return tmp_path


def test_amazon2018_reads_reviews_meta_and_cleans_html(beauty2018: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="semrec.data.amazon"):
        ds = load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)

    assert ds.name == "Beauty" and ds.source == str(beauty2018 / "Beauty_5.json")
    assert ds.user_ids == ["u1", "u2"]
    assert ds.item_ids == ["B1", "B2", "B3"]  # first appearance
    assert ds.timestamps.dtype == np.int64 and ds.timestamps.tolist() == [100, 200, 100, 50, 300]
    assert ds.ratings.tolist() == [5.0, 4.0, 3.0, 1.0, 2.0]
    # u1: B3 (50), then B1 and B2 both at 100 in file order
    assert sequences_by_id(ds) == {"u1": ["B3", "B1", "B2"], "u2": ["B2", "B1"]}
    # one review per interaction, in time order, HTML stripped
    assert ds.user_text == [
        ["", "Love it. Smells great & lasts.", "Same second, later line"],
        ["Ok! Fine", ""],
    ]
    assert ds.item_text == [
        {
            "title": "Rose & Oud Soap",
            "description": "Hand made. Vegan",
            "brand": "Acme",
            "categories": "Beauty, Skin Care",
            "main_category": "All Beauty",
            "features": "Big; Small",
            "price": "$12.99",
        },
        {"title": "Comb"},  # the first of two lines wins
        {"title": "Brush"},  # empty fields left out
    ]
    # every reviewed item has a line: the unreviewed B9 and the repeated B2 are not counted
    assert "no metadata line" not in caplog.text


def test_amazon2014_gzip_and_python_literal_meta(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "reviews_Beauty_5.json.gz",
        [r18("a", "X1", 10), r18("a", "X2", 20), r18("b", "X1", 15)],
    )
    write_lines(
        tmp_path / "meta_Beauty.json.gz",
        [
            "{'asin': 'X1', 'title': \"Mom's Kit\", 'price': 9.5, 'salesRank': {'Beauty': 12}, "
            "'categories': [['Beauty', 'Makeup'], ['Beauty', 'Tools &amp; Accessories']]}",
            json.dumps({"asin": "X2", "description": "Soft &quot;bristles&quot;"}),
        ],
    )
    ds = load_dataset("amazon2014", str(tmp_path), "Beauty", kcore=0)
    assert ds.item_ids == ["X1", "X2"] and ds.user_ids == ["a", "b"]
    assert ds.item_text == [
        {"title": "Mom's Kit", "price": "9.5", "categories": "Beauty, Makeup, Tools & Accessories"},
        {"description": 'Soft "bristles"'},
    ]
    assert ds.user_text is None  # no line has review text


def test_amazon2014_meta_is_never_evaluated(tmp_path: Path, caplog) -> None:
    marker = tmp_path / "pwned"
    write_lines(tmp_path / "reviews_Toys_5.json", [r18("a", "X1", 1), r18("a", "X2", 2)])
    meta = write_lines(
        tmp_path / "meta_Toys.json",
        [
            "{'asin': 'X1', 'title': 'Kite'}",
            f"__import__('os').system('touch {marker}')",
            "{'asin': 'X2', 'title': 'Ball'}",
        ],
    )
    with pytest.raises(DataError) as err:
        load_dataset("amazon2014", str(tmp_path), "Toys", kcore=0)
    assert str(err.value).startswith(f"{meta}:2: neither JSON (")
    assert str(err.value).endswith("nor a Python dict literal")

    with caplog.at_level(logging.WARNING, logger="semrec.data.amazon"):
        ds = load_dataset("amazon2014", str(tmp_path), "Toys", kcore=0, on_bad_line="skip")
    assert not marker.exists()
    assert [text["title"] for text in ds.item_text] == ["Kite", "Ball"]
    assert f"{meta}: skipped 1 malformed line(s)" in caplog.text


def test_amazon2023_jsonl_keeps_millisecond_timestamps(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "All_Beauty.jsonl",
        [
            r23("U1", "P1", 1588687728923, 5.0, title="Nice", text="Works <br />well"),
            r23("U1", "P2", 1588687728923, 1.0, title="", text="Broke"),  # same ms: file order
            r23("U1", "P3", 1588687728922, 3.0),
        ],
    )
    write_lines(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            json.dumps(
                {
                    "parent_asin": "P1",
                    "title": "Serum",
                    "store": "Glow Co",
                    "description": [],
                    "features": ["Light", "<b>Fresh</b>"],
                    "categories": [],
                    "main_category": "All Beauty",
                    "price": None,
                    "details": {"Brand": "Glow"},
                }
            ),
            json.dumps({"parent_asin": "P2", "title": "Mask", "price": 12.0}),
            json.dumps({"parent_asin": "P3", "title": "Gel"}),
        ],
    )
    ds = load_dataset("amazon2023", str(tmp_path), "All_Beauty", kcore=0)
    assert ds.timestamps.dtype == np.int64
    assert ds.timestamps.tolist() == [1588687728923, 1588687728923, 1588687728922]
    assert sequences_by_id(ds) == {"U1": ["P3", "P1", "P2"]}
    assert ds.user_text == [["", "Nice. Works well", "Broke"]]
    assert ds.item_text == [
        {
            "title": "Serum",
            "brand": "Glow Co",
            "features": "Light; Fresh",
            "main_category": "All Beauty",
        },
        {"title": "Mask", "price": "12.0"},
        {"title": "Gel"},
    ]


# --------------------------------------------------------------------------- preprocessing


def test_default_kcore_is_5_and_iterative(tmp_path: Path) -> None:
    items = [f"I{i}" for i in range(5)]
    lines = [r18(f"u{u}", item, 10 * u + i) for u in range(5) for i, item in enumerate(items)]
    lines += [r18("short", item, 99) for item in items[:4]]  # 4 interactions: dropped at k=5
    write_lines(tmp_path / "Toys_5.json", lines)
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": i, "title": i}) for i in items])
    ds = load_dataset("amazon2018", str(tmp_path), "Toys")
    assert ds.user_ids == [f"u{u}" for u in range(5)]
    assert ds.num_interactions == 25

    # k=2: z has one interaction; dropping it leaves c with one, so c goes in a second round
    write_lines(
        tmp_path / "Toys_5.json",
        [r18("a", "x", 1), r18("a", "y", 2), r18("b", "x", 1), r18("b", "y", 2)]
        + [r18("c", "x", 3), r18("c", "z", 4)],
    )
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": i}) for i in "xyz"])
    ds = load_dataset("amazon2018", str(tmp_path), "Toys", kcore=2)
    assert sequences_by_id(ds) == {"a": ["x", "y"], "b": ["x", "y"]}


def test_dedup_keeps_the_earliest_pair_or_all(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "Toys_5.json",
        [
            r18("a", "x", 30, 1.0, reviewText="again"),
            r18("a", "y", 20, 2.0, reviewText="y"),
            r18("a", "x", 10, 3.0, reviewText="first"),
            r18("a", "x", 10, 4.0, reviewText="same time, later line"),
        ],
    )
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": "x"}), json.dumps({"asin": "y"})])
    first = load_dataset("amazon2018", str(tmp_path), "Toys", kcore=0)
    assert sequences_by_id(first) == {"a": ["x", "y"]}
    assert first.ratings.tolist() == [2.0, 3.0]  # file order of the kept lines
    assert first.user_text == [["first", "y"]]

    every = load_dataset("amazon2018", str(tmp_path), "Toys", kcore=0, dedup="all")
    assert sequences_by_id(every) == {"a": ["x", "x", "y", "x"]}
    assert every.user_text == [["first", "same time, later line", "y", "again"]]


def test_items_without_metadata_kept_or_dropped(tmp_path: Path, caplog) -> None:
    write_lines(
        tmp_path / "Toys_5.json",
        [r18(u, i, t) for t, (u, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")])]
        + [r18("a", "nometa", 9), r18("b", "nometa", 9)],
    )
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": "x"}), json.dumps({"asin": "y"})])
    with caplog.at_level(logging.WARNING, logger="semrec.data.amazon"):
        kept = load_dataset("amazon2018", str(tmp_path), "Toys", kcore=2, missing_meta="keep")
    assert kept.item_ids == ["x", "y", "nometa"] and kept.item_text[2] == {}
    assert "1 of 3 items have no metadata line (first: 'nometa'); kept with empty text" in (
        caplog.text
    )

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semrec.data.amazon"):
        dropped = load_dataset("amazon2018", str(tmp_path), "Toys", kcore=2)  # the default
    assert dropped.item_ids == ["x", "y"] and dropped.num_interactions == 4
    assert "1 of 3 items have no metadata line (first: 'nometa'); dropped" in caplog.text


def test_kcore_keeps_per_interaction_reviews_aligned() -> None:
    # file order is not time order; item 'rare' (one interaction) is k-cored away
    ds = RecDataset(
        name="toy",
        user_ids=["a", "b", "c"],
        item_ids=["x", "y", "rare"],
        users=[0, 0, 0, 1, 1, 2, 2],
        items=[1, 2, 0, 0, 1, 0, 1],
        timestamps=[20, 15, 10, 1, 2, 5, 6],
        user_text=[
            ["about x", "about rare", "about y"],  # one per interaction, in time order
            ["b on x", "b on y"],
            ["a profile, not per interaction"],  # not one per interaction: kept whole
        ],
    )
    filtered = kcore_filter(ds, 2)
    assert filtered.item_ids == ["x", "y"]
    assert sequences_by_id(filtered)["a"] == ["x", "y"]
    assert filtered.user_text == [
        ["about x", "about y"],
        ["b on x", "b on y"],
        ["a profile, not per interaction"],
    ]


# --------------------------------------------------------------------------- bad input


def test_malformed_line_names_file_line_and_field(beauty2018: Path) -> None:
    reviews = beauty2018 / "Beauty_5.json"
    good = reviews.read_text().splitlines()
    write_lines(reviews, [good[0], good[1], '{"reviewerID": "u9", "asin": ', *good[2:]])
    with pytest.raises(DataError) as err:
        load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)
    assert str(err.value).startswith(f"{reviews}:3: invalid JSON: Expecting value (column")

    write_lines(reviews, [good[0], json.dumps({"reviewerID": "u9", "asin": "B1", "overall": 5})])
    with pytest.raises(DataError) as err:
        load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)
    assert str(err.value) == f"{reviews}:2 (field 'unixReviewTime'): missing required field"

    bad_rating = {"reviewerID": "u9", "asin": "B1", "overall": "five", "unixReviewTime": 5}
    write_lines(reviews, [good[0], json.dumps(bad_rating)])
    with pytest.raises(DataError, match=r":2 \(field 'overall'\): expected a finite number"):
        load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)


def test_skip_mode_counts_bad_lines(beauty2018: Path, caplog) -> None:
    reviews = beauty2018 / "Beauty_5.json"
    good = reviews.read_text().splitlines()
    write_lines(reviews, [good[0], "not json", good[1], '{"asin": "B1"}', "[1, 2]", *good[2:]])
    with caplog.at_level(logging.WARNING, logger="semrec.data.amazon"):
        ds = load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0, on_bad_line="skip")
    assert ds.num_interactions == 5  # the good lines only
    counted = f"{reviews}: skipped 3 malformed line(s) (on_bad_line: skip); the first: {reviews}:2:"
    assert counted in caplog.text


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    lines = [r18(f"u{i % 7}", f"I{i % 5}", i) for i in range(400)]
    reviews = write_lines(tmp_path / "Toys_5.json.gz", lines)
    reviews.write_bytes(reviews.read_bytes()[:-40])
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": "I0"})])
    with pytest.raises(DataError) as err:
        load_dataset("amazon2018", str(tmp_path), "Toys", on_bad_line="skip")
    assert str(err.value).startswith(f"{reviews}: truncated or corrupt gzip file")


def test_missing_files_list_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        load_dataset("amazon2018", str(tmp_path), "Beauty")
    assert str(err.value) == (
        f"{tmp_path}: no amazon2018 review file for 'Beauty': looked for reviews_Beauty_5.json, "
        "reviews_Beauty_5.json.gz, Beauty_5.json, Beauty_5.json.gz, reviews_Beauty.json, "
        "reviews_Beauty.json.gz, Beauty.json, Beauty.json.gz (files there: notes.txt)"
    )
    write_lines(tmp_path / "All_Beauty.jsonl", [r23("u", "p", 1)])
    with pytest.raises(
        DataError, match="looked for meta_All_Beauty.jsonl, meta_All_Beauty.jsonl.gz"
    ):
        load_dataset("amazon2023", str(tmp_path), "All_Beauty")


def test_bad_options_are_refused(beauty2018: Path) -> None:
    with pytest.raises(ValueError, match="has no option 'k_core'.*options: kcore, dedup"):
        load_dataset("amazon2018", str(beauty2018), "Beauty", k_core=3)
    with pytest.raises(ValueError, match="option dedup must be 'first' or 'all', got 'last'"):
        load_dataset("amazon2018", str(beauty2018), "Beauty", dedup="last")
    # the check load_config runs (called directly: load_config imports the model stack)
    with pytest.raises(ConfigError, match="dataset.options.dedupe: .*did you mean 'dedup'"):
        _check_dataset_options(DatasetConfig(source="amazon2018", options={"dedupe": "all"}))
    with pytest.raises(ConfigError, match="source 'recbole' has no option 'kcore'"):
        _check_dataset_options(DatasetConfig(source="recbole", options={"kcore": 5}))
    _check_dataset_options(DatasetConfig(source="amazon2023", options={"on_bad_line": "skip"}))


def test_large_files_show_progress(beauty2018: Path, monkeypatch, capsys) -> None:
    load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)
    assert "Beauty_5.json" not in capsys.readouterr().err  # small: no bar
    monkeypatch.setattr(amazon, "PROGRESS_MIN_BYTES", 0)
    load_dataset("amazon2018", str(beauty2018), "Beauty", kcore=0)
    err = capsys.readouterr().err
    assert "Beauty_5.json: 100%" in err and "meta_Beauty.json: 100%" in err


# --------------------------------------------------------------------------- writers


@pytest.fixture
def sports(tmp_path: Path) -> Path:
    """A random 2018 category with ties, a repeat, HTML and reviews, gzipped."""
    rng = random.Random(7)
    items = [f"S{i}" for i in range(8)]
    lines = []
    for user in range(12):
        for item in rng.sample(items, rng.randint(3, 6)):
            lines.append(
                r18(
                    f"user{user}",
                    item,
                    rng.choice([100, 200, 200, 300, 400]),
                    float(rng.randint(1, 5)),
                    summary=rng.choice(["Good", "Bad!", ""]),
                    reviewText=f"<p>{item} by {user}</p>",
                )
            )
    lines += [
        r18("user3", "S1", 500, 1.0, reviewText="S1 again by 3"),  # a repeat: dedup drops it
        r18("user0", "RARE", 250, 2.0, reviewText="RARE by 0"),  # k-core drops the item
        r18("user99", "S2", 100, 3.0, reviewText="S2 by 99"),  # k-core drops the user
    ]
    rng.shuffle(lines)
    source = tmp_path / "src"
    source.mkdir()
    write_lines(source / "Sports_5.json.gz", lines)
    meta = [
        json.dumps(
            {"asin": item, "title": f"Ball &amp; {item}", "category": ["Sports", "Balls, Etc"]}
        )
        for item in items[:-1]
    ]
    meta += [
        json.dumps({"asin": items[-1], "title": "", "category": []}),  # a line with no text
        json.dumps({"asin": "RARE", "title": "Rare ball"}),  # k-core, not missing_meta, drops it
    ]
    write_lines(source / "meta_Sports.json.gz", meta)
    return source


def assert_same_split(a: RecDataset, b: RecDataset) -> None:
    sa, sb = leave_one_out(a, max_history=3), leave_one_out(b, max_history=3)
    assert (sa.train, sa.valid, sa.test) == (sb.train, sb.valid, sb.test)
    assert len(sa.test) == a.num_users and len(sa.train) > 0


def test_lcrec_json_round_trip(sports: Path, tmp_path: Path) -> None:
    ds = load_dataset("amazon2018", str(sports), "Sports", kcore=3)
    everything = load_dataset("amazon2018", str(sports), "Sports", kcore=0, dedup="all")
    assert everything.num_interactions - ds.num_interactions == 3  # dedup and k-core
    assert {"user99"} == set(everything.user_ids) - set(ds.user_ids)
    assert "RARE" in everything.item_ids and "RARE" not in ds.item_ids and "user3" in ds.user_ids
    assert ds.item_text[ds.item_ids.index("S7")] == {}  # round-trips an item with no text
    # after both, review k of a user is still about the user's k-th item
    for user, items in sequences_by_id(ds).items():
        reviews = ds.user_text[ds.user_ids.index(user)]
        about = [f"{item} by {user.removeprefix('user')}" for item in items]
        assert len(reviews) == len(items)
        assert all(review.endswith(text) for review, text in zip(reviews, about)), reviews
    out = tmp_path / "out"
    paths = write_lcrec_json(ds, out)
    assert sorted(p.name for p in paths) == [
        "Sports.inter.json",
        "Sports.item.json",
        "Sports.review.json",
    ]
    back = load_dataset("lcrec_json", str(out), "Sports")
    assert (back.user_ids, back.item_ids) == (ds.user_ids, ds.item_ids)
    assert back.item_text == ds.item_text
    assert back.user_text == ds.user_text
    assert_same_split(ds, back)

    # converting again is refused without overwrite, and writes nothing
    again = load_dataset("amazon2018", str(sports), "Sports", reviews=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="already holds Sports.inter.json.*--overwrite"):
        write_lcrec_json(again, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # with overwrite, converting again without reviews leaves no stale review file behind
    write_lcrec_json(again, out, overwrite=True)
    assert not (out / "Sports.review.json").exists()
    assert load_dataset("lcrec_json", str(out), "Sports").user_text is None


def test_recbole_round_trip(sports: Path, tmp_path: Path) -> None:
    ds = load_dataset("amazon2018", str(sports), "Sports", kcore=3)
    write_recbole(ds, tmp_path / "out")
    header = (tmp_path / "out" / "Sports.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    back = load_dataset("recbole", str(tmp_path / "out"), "Sports")
    assert (back.user_ids, back.item_ids) == (ds.user_ids, ds.item_ids)
    assert back.item_text == ds.item_text
    order_a, order_b = ds.chronological_order(), back.chronological_order()
    assert back.timestamps[order_b].tolist() == ds.timestamps[order_a].tolist()
    assert back.ratings[order_b].tolist() == ds.ratings[order_a].tolist()
    assert_same_split(ds, back)


def test_recbole_timestamps_keep_full_precision(tmp_path: Path) -> None:
    ds = RecDataset(
        name="t",
        user_ids=["u"],
        item_ids=["a", "b", "c"],
        users=[0, 0, 0],
        items=[2, 0, 1],
        timestamps=[1588687728925, 1588687728923, 1588687728924],  # ms: float32 would merge
        ratings=[0.1, 4.5, 3.0],
    )
    write_recbole(ds, tmp_path)
    rows = (tmp_path / "t.inter").read_text().splitlines()[1:]
    assert rows == [
        "u\ta\t4.5\t1588687728923",
        "u\tb\t3\t1588687728924",
        "u\tc\t0.1\t1588687728925",
    ]
    assert (
        load_dataset("recbole", str(tmp_path), "t").ratings.tolist()
        == ds.ratings[[1, 2, 0]].tolist()
    )


def test_minionerec_csv(sports: Path, tmp_path: Path) -> None:
    ds = load_dataset("amazon2018", str(sports), "Sports", kcore=3)
    ds.precomputed_sids = [[f"<a_{i}>", f"<b_{i % 2}>"] for i in range(ds.num_items)]
    write_minionerec_csv(ds, tmp_path, max_history=2)
    split = leave_one_out(ds, max_history=2)
    for part, examples in [("train", split.train), ("valid", split.valid), ("test", split.test)]:
        with open(tmp_path / part / "Sports.csv", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(examples)
        example, row = examples[-1], rows[-1]
        assert row["user_id"] == ds.user_ids[example.user]
        assert ast.literal_eval(row["history_item_id"]) == [ds.item_ids[i] for i in example.history]
        assert row["item_id"] == ds.item_ids[example.target]
        assert row["item_sid"] == "".join(ds.precomputed_sids[example.target])
        assert ast.literal_eval(row["history_item_title"]) == [
            ds.item_text[i].get("title", "") for i in example.history
        ]
    info = (tmp_path / "info" / "Sports.txt").read_text(encoding="utf-8").splitlines()
    assert info[0] == f"<a_0><b_0>\t{ds.item_text[0]['title']}\t{ds.item_ids[0]}"


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    write_lines(tmp_path / "Toys_5.json", [r18("a", "x", 1)] * 2 + [r18("a", "y", 2)])
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": "x"})])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="repeat the same user, item and timestamp"):
        convert(
            "amazon2018",
            str(tmp_path),
            "Toys",
            "recbole",
            out,
            options={"dedup": "all", "kcore": 0},
        )
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError):
        convert(
            "amazon2018",
            str(tmp_path),
            "Toys",
            "recbole",
            out,
            options={"dedup": "all", "kcore": 0},
        )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # no partial files, no temp dir


# --------------------------------------------------------------------------- CLI


def test_cli_convert(beauty2018: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lcrec"
    args = ["convert", "--from", "amazon2018", "--path", str(beauty2018), "--name", "Beauty"]
    assert main([*args, "--to", "lcrec_json", "--out", str(out), "--option", "kcore=0"]) == 0
    printed = capsys.readouterr().out
    assert "[convert] amazon2018 Beauty: 2 users, 3 items, 5 interactions -> lcrec_json" in printed
    back = load_dataset("lcrec_json", str(out), "Beauty")
    assert sequences_by_id(back) == {"u1": ["B3", "B1", "B2"], "u2": ["B2", "B1"]}
    assert back.item_text[0]["title"] == "Rose & Oud Soap"
    again = [*args, "--to", "lcrec_json", "--out", str(out), "--option", "kcore=0"]
    assert main(again) == 1  # the first conversion's files are not replaced silently
    assert "already holds" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0

    assert main([*args, "--to", "recbole", "--out", str(tmp_path / "rb"), "-o", "kcore=-1"]) == 1
    assert "option kcore must be an integer >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "rb").exists()
    code = main([*args, "--to", "recbole", "--out", str(tmp_path / "rb"), "--max-history", "5"])
    assert code == 1
    assert "format 'recbole' has no option 'max_history'" in capsys.readouterr().err
