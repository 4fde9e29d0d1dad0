"""Loaders (RecBole atomic files, LC-Rec JSON, built-in ml-100k) and RecDataset basics."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from semrec.data import DataError, RecDataset, leave_one_out, load_dataset
from semrec.registry import UnknownComponentError


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    """A tiny RecBole dataset 'toy' with .inter, .item and .user."""
    tmp_path = tmp_path / "toy"  # the directory name is the default dataset name
    tmp_path.mkdir()
    write(
        tmp_path / "toy.inter",
        [
            INTER_HEADER,
            "u1\ti2\t4\t1700000001",
            "u2\ti1\t3.5\t1700000000",
            "u1\ti1\t5\t1700000000",
            "u2\ti3\t1\t1700000002.0",
        ],
    )
    write(
        tmp_path / "toy.item",
        [
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float",
            "i1\tToy Story\t1995\tAnimation Children's Comedy\t9.5",
            "i2\tHeat\t1995\tAction Crime\t",
            "i3\tAlien\t1979\tHorror,Science Fiction\t3",
            "i9\tNever Watched\t2001\tDrama\t1",
        ],
    )
    write(
        tmp_path / "toy.user",
        [
            "user_id:token\tage:token\tgender:token",
            "u2\t31\tF",
            "u1\t24\tM",
            "u7\t50\tM",
        ],
    )
    return tmp_path


def test_recbole_loads_interactions_items_and_users(recbole_dir: Path) -> None:
    ds = load_dataset("recbole", str(recbole_dir))

    assert ds.name == "toy"
    assert ds.source == str(recbole_dir / "toy.inter")
    # items in .item order (the never-watched catalogue item is kept), users in .user order
    # restricted to users with interactions
    assert ds.item_ids == ["i1", "i2", "i3", "i9"]
    assert ds.user_ids == ["u2", "u1"]
    assert ds.users.tolist() == [1, 0, 1, 0]
    assert ds.items.tolist() == [1, 0, 0, 2]
    assert ds.timestamps.dtype == np.int64
    # one second apart: float32 would make these equal
    assert ds.timestamps.tolist() == [1700000001, 1700000000, 1700000000, 1700000002]
    assert ds.ratings is not None and ds.ratings.dtype == np.float32
    assert ds.ratings.tolist() == [4.0, 3.5, 5.0, 1.0]
    assert ds.item_text == [
        {
            "title": "Toy Story",
            "year": "1995",
            "categories": "Animation, Children's, Comedy",
            "price": "9.5",
        },
        {"title": "Heat", "year": "1995", "categories": "Action, Crime"},
        {"title": "Alien", "year": "1979", "categories": "Horror, Science Fiction", "price": "3"},
        {"title": "Never Watched", "year": "2001", "categories": "Drama", "price": "1"},
    ]
    assert ds.user_features == [{"age": "31", "gender": "F"}, {"age": "24", "gender": "M"}]
    assert ds.item_popularity().tolist() == [2, 1, 1, 0]
    assert [s.tolist() for s in ds.sequences()] == [[0, 2], [0, 1]]
    summary = ds.summary()
    assert (summary["num_users"], summary["num_items"], summary["num_interactions"]) == (2, 4, 4)
    assert summary["density"] == pytest.approx(4 / 8)


def test_recbole_without_item_and_user_files(tmp_path: Path) -> None:
    write(
        tmp_path / "bare.inter",
        ["user_id:token\titem_id:token", "a\tx", "b\ty", "a\ty", "a\tz"],
    )
    ds = load_dataset("recbole", str(tmp_path), name="bare")
    assert ds.item_ids == ["x", "y", "z"]  # first appearance
    assert ds.user_ids == ["a", "b"]
    assert ds.item_text == [{}, {}, {}]
    assert ds.user_features is None and ds.ratings is None
    # no timestamp column: line order is time order
    assert ds.timestamps.tolist() == [0, 1, 2, 3]
    assert [s.tolist() for s in ds.sequences()] == [[0, 1, 2], [1]]


def test_recbole_malformed_line_names_file_and_line(recbole_dir: Path) -> None:
    inter = write(recbole_dir / "toy.inter", [INTER_HEADER, "u1\ti1\t5\t1", "u1\ti2\t4"])
    with pytest.raises(DataError) as err:
        load_dataset("recbole", str(recbole_dir))
    assert str(err.value) == (
        f"{inter}:3: expected 4 tab-separated fields (user_id, item_id, rating, timestamp), got 3"
    )


def test_recbole_bad_timestamp_names_line_and_field(recbole_dir: Path) -> None:
    inter = write(recbole_dir / "toy.inter", [INTER_HEADER, "u1\ti1\t5\tyesterday"])
    with pytest.raises(DataError) as err:
        load_dataset("recbole", str(recbole_dir))
    assert str(err.value) == (
        f"{inter}:2 (field 'timestamp'): expected an integer timestamp, got 'yesterday'"
    )
    assert (err.value.line, err.value.field) == (2, "timestamp")


def test_recbole_unknown_item_names_file_line_and_id(recbole_dir: Path) -> None:
    inter = write(recbole_dir / "toy.inter", [INTER_HEADER, "u1\ti1\t5\t1", "u2\tghost\t4\t2"])
    with pytest.raises(DataError) as err:
        load_dataset("recbole", str(recbole_dir))
    assert str(err.value) == (
        f"{inter}:3 (field 'item_id'): item 'ghost' is not in {recbole_dir / 'toy.item'}"
    )


def test_recbole_user_missing_from_user_file(recbole_dir: Path) -> None:
    write(recbole_dir / "toy.inter", [INTER_HEADER, "nobody\ti1\t5\t1"])
    with pytest.raises(DataError, match=r"toy.inter:2 \(field 'user_id'\): user 'nobody'"):
        load_dataset("recbole", str(recbole_dir))


def test_recbole_bad_header_and_missing_files(recbole_dir: Path, tmp_path: Path) -> None:
    write(recbole_dir / "toy.inter", ["user_id:token\titem_id", "u1\ti1"])
    with pytest.raises(DataError, match=r"toy.inter:1: header column 'item_id' is not of the form"):
        load_dataset("recbole", str(recbole_dir))
    write(recbole_dir / "toy.inter", ["user_id:token\tthing:token", "u1\ti1"])
    with pytest.raises(DataError, match=r"toy.inter:1: missing required column 'item_id'"):
        load_dataset("recbole", str(recbole_dir))
    with pytest.raises(DataError, match=r"other.inter: missing interaction \(.inter\) file"):
        load_dataset("recbole", str(recbole_dir), name="other")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("recbole")


def test_recbole_duplicate_item_and_alias_clash(recbole_dir: Path) -> None:
    item = write(recbole_dir / "toy.item", ["item_id:token\ttitle:token_seq", "i1\tA", "i1\tB"])
    with pytest.raises(DataError) as err:
        load_dataset("recbole", str(recbole_dir))
    assert str(err.value) == f"{item}:3: item 'i1' already defined on line 2"
    write(recbole_dir / "toy.item", ["item_id:token\ttitle:token_seq\tmovie_title:token_seq"])
    with pytest.raises(DataError, match="columns 'title' and 'movie_title' both map to"):
        load_dataset("recbole", str(recbole_dir))


def test_unknown_source_lists_registered_ones() -> None:
    with pytest.raises(UnknownComponentError) as err:
        load_dataset("recbol")
    message = str(err.value)
    assert "'recbole'" in message and "lcrec_json" in message and "ml-100k" in message


# --------------------------------------------------------------------------- LC-Rec JSON


@pytest.fixture
def lcrec_dir(tmp_path: Path) -> Path:
    tmp_path = tmp_path / "Toys"
    tmp_path.mkdir()
    files = {
        "Toys.inter.json": {"0": [1, 0, 2], "1": [2, 1]},
        "Toys.item.json": {
            "0": {"title": "Robot", "description": "A  robot.", "brand": "Acme", "categories": ""},
            "1": {"title": "Kite", "categories": ["Outdoor", "Wind Toys"]},
            "2": {"title": "Ball", "categories": "Sports,Balls", "description": None},
        },
        "Toys.index.json": {
            "0": ["<a_1>", "<b_2>"],
            "1": ["<a_1>", "<b_3>"],
            "2": ["<a_4>", "<b_2>"],
        },
        "Toys.review.json": {"1": ["Great kite.", "Meh ball."]},
    }
    for filename, content in files.items():
        (tmp_path / filename).write_text(json.dumps(content), encoding="utf-8")
    return tmp_path


def test_lcrec_json_loads_everything(lcrec_dir: Path) -> None:
    ds = load_dataset("lcrec_json", str(lcrec_dir))
    assert ds.name == "Toys"
    assert ds.user_ids == ["0", "1"]
    assert ds.item_ids == ["0", "1", "2"]
    assert ds.users.tolist() == [0, 0, 0, 1, 1]
    assert ds.items.tolist() == [1, 0, 2, 2, 1]
    assert ds.timestamps.tolist() == [0, 1, 2, 0, 1]  # list position
    assert ds.ratings is None
    assert ds.item_text == [
        {"title": "Robot", "description": "A  robot.", "brand": "Acme"},
        {"title": "Kite", "categories": "Outdoor, Wind Toys"},
        {"title": "Ball", "categories": "Sports, Balls"},
    ]
    assert ds.precomputed_sids == [["<a_1>", "<b_2>"], ["<a_1>", "<b_3>"], ["<a_4>", "<b_2>"]]
    assert ds.user_text == [[], ["Great kite.", "Meh ball."]]
    assert [s.tolist() for s in ds.sequences()] == [[1, 0, 2], [2, 1]]


def test_lcrec_json_unknown_item_names_file_user_and_item(lcrec_dir: Path) -> None:
    inter = lcrec_dir / "Toys.inter.json"
    inter.write_text(json.dumps({"0": [0, 1], "7": [2, 42]}))
    with pytest.raises(DataError) as err:
        load_dataset("lcrec_json", str(lcrec_dir))
    assert str(err.value) == (
        f"{inter} (user '7'): item '42' is not in {lcrec_dir / 'Toys.item.json'}"
    )


def test_lcrec_json_bad_files(lcrec_dir: Path) -> None:
    (lcrec_dir / "Toys.index.json").write_text(json.dumps({"0": ["<a_1>"], "1": ["<a_2>"]}))
    with pytest.raises(DataError, match=r"Toys.index.json: 1 items have no SID, first: '2'"):
        load_dataset("lcrec_json", str(lcrec_dir))
    (lcrec_dir / "Toys.index.json").write_text(json.dumps({"0": "<a_1>"}))
    with pytest.raises(DataError, match=r"Toys.index.json \(item '0'\): expected a non-empty list"):
        load_dataset("lcrec_json", str(lcrec_dir))
    (lcrec_dir / "Toys.inter.json").write_text('{"0": [1,\n 2,]}')
    with pytest.raises(DataError, match=r"Toys.inter.json:2: invalid JSON"):
        load_dataset("lcrec_json", str(lcrec_dir))
    (lcrec_dir / "Toys.inter.json").write_text('{"0": 5}')
    with pytest.raises(DataError, match=r"\(user '0'\): expected a list of item ids, got int"):
        load_dataset("lcrec_json", str(lcrec_dir))


# --------------------------------------------------------------------------- built-in ml-100k


def test_ml100k_needs_recbole_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match="pip install --no-deps recbole"):
        load_dataset("ml-100k")


def _ml100k_reference_last_items() -> dict[str, str]:
    """Straight from the file: per user, the item with the largest (timestamp, line)."""
    directory = importlib.metadata.distribution("recbole").locate_file(
        "recbole/dataset_example/ml-100k"
    )
    last: dict[str, tuple[int, int, str]] = {}
    with open(Path(str(directory)) / "ml-100k.inter") as fh:
        next(fh)
        for line_no, line in enumerate(fh):
            user, item, _, timestamp = line.rstrip("\n").split("\t")
            key = (int(timestamp), line_no, item)
            if user not in last or key > last[user]:
                last[user] = key
    return {user: key[2] for user, key in last.items()}


def test_ml100k_loads_and_test_target_is_last_interaction() -> None:
    try:
        importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recbole wheel (ml-100k files) not installed")
    ds = load_dataset("ml-100k")
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100_000)
    assert ds.item_text[0] == {
        "title": "Toy Story",
        "year": "1995",
        "categories": "Animation, Children's, Comedy",
    }
    assert ds.user_features is not None
    assert ds.user_features[0] == {
        "age": "24",
        "gender": "M",
        "occupation": "technician",
        "zip_code": "85711",
    }
    split = leave_one_out(ds, max_history=20)
    assert len(split.test) == len(split.valid) == 943
    assert len(split.train) == 100_000 - 3 * 943
    expected = _ml100k_reference_last_items()
    got = {ds.user_ids[ex.user]: ds.item_ids[ex.target] for ex in split.test}
    assert got == expected
    # the check has teeth: float32 timestamps (64 s resolution) move 149 users' targets
    rounded = dataclasses.replace(ds, timestamps=ds.timestamps.astype(np.float32).astype(np.int64))
    moved = sum(a.target != b.target for a, b in zip(split.test, leave_one_out(rounded).test))
    assert moved == 149
    lengths = np.bincount(ds.users)
    assert [len(ex.history) for ex in split.test] == [min(20, n - 1) for n in lengths]


def test_dataset_rejects_misaligned_side_information() -> None:
    with pytest.raises(DataError, match="item_text has 1 entries, expected 2"):
        RecDataset(
            name="t",
            user_ids=["u"],
            item_ids=["a", "b"],
            users=[0],
            items=[1],
            timestamps=[0],
            item_text=[{"title": "A"}],
            source="t.inter",
        )
    with pytest.raises(DataError, match="t.inter: items holds indices outside"):
        RecDataset("t", ["u"], ["a"], users=[0], items=[3], timestamps=[0], source="t.inter")
    with pytest.raises(DataError, match="timestamps must be integers"):
        RecDataset("t", ["u"], ["a"], users=[0], items=[0], timestamps=np.array([1.5]))
