"""ItemTextBuilder and user_text: exact outputs and exact errors."""

from __future__ import annotations

import pytest

from semrec.data import DataError, RecDataset
from semrec.text.item_text import ItemTextBuilder, user_text


def catalogue(item_text: list[dict[str, str]], user_reviews=None) -> RecDataset:
    item_ids = [f"i{k}" for k in range(len(item_text))]
    return RecDataset(
        name="shop",
        user_ids=["u0", "u1"],
        item_ids=item_ids,
        users=[0, 1],
        items=[0, 0],
        timestamps=[0, 1],
        item_text=item_text,
        user_text=user_reviews,
        source="shop.item",
    )


ITEMS = [
    {"brand": "Acme", "title": "Robot", "description": "A   tin\nrobot."},
    {"title": "Kite", "categories": "Outdoor, Wind"},
    {"title": "Ball", "description": "  ", "brand": "Acme", "year": "1999"},
]


def test_default_uses_every_field_title_and_description_first() -> None:
    texts = ItemTextBuilder().build(catalogue(ITEMS))
    assert texts == [
        "title: Robot; description: A tin robot.; brand: Acme",
        "title: Kite; categories: Outdoor, Wind",
        "title: Ball; brand: Acme; year: 1999",
    ]


def test_explicit_fields_error_or_skip() -> None:
    ds = catalogue(ITEMS)
    with pytest.raises(DataError) as err:
        ItemTextBuilder(fields=["title", "brand"]).build(ds)
    assert str(err.value) == (
        "shop.item (item 'i1', field 'brand'): item 'i1' lacks 'brand' "
        "(has: categories, title); set missing='skip' to leave missing fields out"
    )
    skipped = ItemTextBuilder(fields=["brand", "title"], missing="skip").build(ds)
    assert skipped == ["brand: Acme; title: Robot", "title: Kite", "brand: Acme; title: Ball"]


def test_template_modes() -> None:
    ds = catalogue(ITEMS)
    template = "{title} {year} by {brand}"
    with pytest.raises(DataError, match=r"item 'i0' lacks 'year'"):
        ItemTextBuilder(template=template).build(ds)
    assert ItemTextBuilder(template=template, missing="skip").build(ds) == [
        "Robot by Acme",
        "Kite by",
        "Ball 1999 by Acme",
    ]


def test_field_no_item_has_is_reported_with_available_fields() -> None:
    ds = catalogue(ITEMS)
    available = "(available: title, description, brand, categories, year)"
    with pytest.raises(DataError) as err:
        ItemTextBuilder(template="{title}: {genre}", missing="skip").build(ds)
    assert str(err.value) == (
        f"shop.item (field 'genre'): item field 'genre' in the template is on no item {available}"
    )
    with pytest.raises(DataError) as err:
        ItemTextBuilder(fields=["genre"], missing="skip").build(ds)
    assert str(err.value) == (
        f"shop.item (field 'genre'): item field 'genre' in the fields list is on no item {available}"
    )


def test_item_without_any_text_is_an_error() -> None:
    ds = catalogue([{"title": "Robot"}, {"title": " ", "brand": "Acme"}])
    with pytest.raises(DataError) as err:
        ItemTextBuilder(fields=["title"], missing="skip").build(ds)
    assert str(err.value) == "shop.item (item 'i1'): item 'i1' has no text in fields title"
    empty = catalogue([{"title": "Robot"}, {}])
    with pytest.raises(DataError, match="item 'i1' has no text in fields title"):
        ItemTextBuilder().build(empty)


def test_builder_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="placeholders must be field names"):
        ItemTextBuilder(template="{0} {title}").build(catalogue(ITEMS))
    with pytest.raises(ValueError, match="either fields or template"):
        ItemTextBuilder(fields=["title"], template="{title}")
    with pytest.raises(ValueError, match="missing must be"):
        ItemTextBuilder(missing="ignore")  # type: ignore[arg-type]


def test_user_text_joins_and_truncates() -> None:
    ds = catalogue(ITEMS, user_reviews=[["Great robot.", " ", "Loud."], []])
    assert user_text(ds) == ["Great robot.\nLoud.", ""]
    assert user_text(ds, max_chars=8, separator=" | ") == ["Great ro", ""]
    assert user_text(catalogue(ITEMS)) is None
