"""A tag's items ranked for the user (reasoning/retrieval.py): with the round robin, the user's
co-visitation trail first, then the sequential model's ranking of all the tag's items, then
popularity; with the mixture, the tags' relevance times the sequential model's softmax within
each tag."""

import numpy as np

from contracts.settings import ItemStep
from features.catalog import Catalog, CatalogItem
from reasoning.retrieval import PersonalScores, TagRetriever
from reasoning.tags import TagVocabulary


def shoes_and_bags():
    items = [CatalogItem(f"s{n}", "shoes", "", f"shoe {n}") for n in range(1, 7)]
    items += [CatalogItem(f"b{n}", "bags", "", f"bag {n}") for n in range(1, 4)]
    vocab = TagVocabulary(["shoes", "bags"], ["shoes", "bags"], ["", ""], [0, 0], ["shopper"])
    return Catalog(items, has_text=True), vocab


def test_a_tags_items_follow_the_user_not_global_popularity():
    catalog, vocab = shoes_and_bags()
    retriever = TagRetriever(vocab, catalog, np.zeros((2, 2)), None, per_tag=4, item_step=ItemStep.ROUND_ROBIN)
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


def test_the_mixture_goes_deep_into_the_sure_tag_and_names_each_items_tag():
    catalog, vocab = shoes_and_bags()
    retriever = TagRetriever(vocab, catalog, np.zeros((2, 2)), None, per_tag=3, item_step=ItemStep.MIXTURE)
    ids = [f"s{n}" for n in range(1, 7)] + ["b1", "b2"]  # b3: an item the sequential model never saw
    rows = {i: r for r, i in enumerate(ids)}
    logits = np.log([0.05, 0.05, 0.1, 0.1, 0.2, 0.5, 0.7, 0.3])
    personal = PersonalScores(np.array([[1.0]]), logits[:, None], rows)
    popularity = {"b3": 100.0}
    # shoes at relevance 0.75, bags at 0.25: P(s6) = 0.75 * 0.5, P(b1) = 0.25 * 0.7, P(s5) = 0.75 * 0.2 ...
    [ranked] = retriever.retrieve([["shoes", "bags"]], popularity, [{"s5"}], 4, None, personal, [[0.75, 0.25]])
    assert [(i, tag) for i, _, tag in ranked] == [("s6", "shoes"), ("b1", "bags"), ("s3", "shoes"), ("s4", "shoes")]
    assert np.allclose([p for _, p, _ in ranked], [0.375, 0.175, 0.075, 0.075])
    # fewer items than asked: the round robin fills up (b3, which only popularity knows, comes last)
    [short] = retriever.retrieve([["bags"]], popularity, [set()], 3, None, personal, [[1.0]])
    assert [i for i, _, _ in short] == ["b1", "b2", "b3"]
    # without a sequential model the round robin serves
    [plain] = retriever.retrieve([["bags"]], popularity, [set()], 2)
    assert [i for i, _, _ in plain] == ["b3", "b1"]


def test_the_product_keeps_the_models_confidence_across_tags():
    catalog, vocab = shoes_and_bags()
    retriever = TagRetriever(vocab, catalog, np.zeros((2, 2)), None, per_tag=3)
    assert retriever.item_step is ItemStep.PRODUCT  # the default
    ids = [f"s{n}" for n in range(1, 7)] + ["b1", "b2"]
    rows = {i: r for r, i in enumerate(ids)}
    # The model: s6 0.4, b1 0.2, s5 0.15, b2 0.1, the other shoes 0.05 / 0.05 / 0.025 / 0.025.
    probs = np.array([0.025, 0.025, 0.05, 0.05, 0.15, 0.4, 0.2, 0.1])
    personal = PersonalScores(np.array([[1.0]]), np.log(probs)[:, None], rows)
    # Equal relevance: the model's own order within the tags' items (bags would win the
    # mixture: two items share a whole tag's mass there).
    [ranked] = retriever.retrieve([["shoes", "bags"]], {}, [set()], 4, None, personal, [[1.0, 1.0]])
    assert [i for i, _, _ in ranked] == ["s6", "b1", "s5", "b2"]
    assert np.allclose([p for _, p, _ in ranked], [0.2, 0.1, 0.075, 0.05])
    [mixed] = retriever.retrieve([["shoes", "bags"]], {}, [set()], 2, None, personal, [[1.0, 1.0]],
                                 item_step=ItemStep.MIXTURE)
    assert [i for i, _, _ in mixed] == ["b1", "s6"]
    # Relevance moves a tag's items up: shoes at a quarter of the weight, s5 falls behind b2.
    [ranked] = retriever.retrieve([["shoes", "bags"]], {}, [{"b1"}], 3, None, personal, [[0.25, 0.75]])
    assert [(i, tag) for i, _, tag in ranked] == [("s6", "shoes"), ("b2", "bags"), ("s5", "shoes")]
