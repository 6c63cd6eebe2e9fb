"""A tag's items ranked for the user (reasoning/retrieval.py): the user's co-visitation trail
first, then the sequential model's ranking of all the tag's items, then popularity."""

import numpy as np

from features.catalog import Catalog, CatalogItem
from reasoning.retrieval import PersonalScores, TagRetriever
from reasoning.tags import TagVocabulary


def test_a_tags_items_follow_the_user_not_global_popularity():
    items = [CatalogItem(f"s{n}", "shoes", "", f"shoe {n}") for n in range(1, 7)]
    catalog = Catalog(items, has_text=True)
    vocab = TagVocabulary(["shoes"], ["shoes"], [""], [0], ["shopper"])
    retriever = TagRetriever(vocab, catalog, np.zeros((1, 2)), None, per_tag=4)
    popularity = {f"s{n}": 10.0 - n for n in range(1, 7)}  # s1 most popular
    rows = {f"s{n}": n - 1 for n in range(1, 7)}
    vectors = np.array([[n, 0.0] for n in range(1, 7)])  # along the user's axis: s6 highest
    personal = PersonalScores(np.array([[1.0, 0.0], [-1.0, 0.0]]), vectors, rows)  # user 1 the other way

    plain = retriever.retrieve([["shoes"], ["shoes"]], popularity, [set(), set()], 4)
    assert [[i for i, _, _ in r] for r in plain] == [["s1", "s2", "s3", "s4"]] * 2
    ranked = retriever.retrieve([["shoes"], ["shoes"]], popularity, [{"s5"}, set()], 4,
                                [{"s2": 3.0}, {}], personal)
    assert [i for i, _, _ in ranked[0]] == ["s2", "s6", "s4", "s3"]  # the trail, then the model; s5 bought
    assert [i for i, _, _ in ranked[1]] == ["s1", "s2", "s3", "s4"]  # this user's model ranking
