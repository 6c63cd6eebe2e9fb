"""Explanations in two stages, grounded, and checked.

1. Style, chosen from the user's interests, the item and the situation: `history` (a related
   item the user interacted with), `interest` (the intent tag and persona that retrieved it),
   `situation` (time of day and season of the user's visit), `attribute` (the item's own brand
   and category).
2. Text in that style, realised from grounded facts only (the local path: a first sentence in
   the style, then a second one with another fact of this user, `realise`), or written by an LLM
   from reasoning/prompts/explanation.md (the openai path).

`check` is the faithfulness gate: an explanation that names a brand or category word, a tag, or
a time word that is not among the item's attributes, the tags, the user's history or the
situation is rejected, with the offending word.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.text import MAX_EXPLANATION_CHARS, is_plain, plain_text
from features.catalog import Catalog, CatalogItem

STYLES = ("history", "interest", "situation", "attribute")
TIME_WORDS = {"night", "morning", "afternoon", "evening", "monday", "tuesday", "wednesday", "thursday",
              "friday", "saturday", "sunday", "winter", "spring", "summer", "autumn", "weekend"}
_WORD = re.compile(r"[a-z0-9]+")
ARTICLES = ("a", "an")

TEMPLATES = {
    "history": (
        "Because you looked at {related}, here is another {what}.",
        "You viewed {related}; this {what} is a close match.",
        "More like the {related} in your history: {what}.",
        "A pick in the spirit of your {related}: {what}.",
        "Since the {related} caught your eye, take a look at this {what}.",
        "Close to the {related} you checked: {a_what}.",
        "If the {related} appealed to you, so may this {what}.",
        "Next to the {related} you browsed sits this {what}.",
        "After {similar} {leaf} looks, one more to compare: {a_what}.",
        "You opened {similar} {leaf} items lately; here is {a_what}.",
    ),
    "interest": (
        "Picked for your interest in {tag}: {what}.",
        "Matches what you are exploring ({tag}): {what}.",
        "You seem to be into {tag}; try this {what}.",
        "Your recent visits point to {tag}, so here is {a_what}.",
        "From the {tag} you keep coming back to: {a_what}.",
        "In line with your taste for {tag}: this {what}.",
        "For the {persona}: {a_what}.",
        "Chosen with the {persona} in mind: {a_what}.",
        "As {a_persona}, you may like this {what}.",
        "Suggested to the {persona} in you: {a_what}.",
        "{A_what}, picked for {a_persona}.",
    ),
    "situation": (
        "{A_what} for your {part} browsing this {season}.",
        "Something for this {season} {part}: {what}.",
        "For a {day} {part}: {what}.",
        "Your {day} {part} pick: {a_what}.",
        "Made for your {season} {day}: this {what}.",
        "On this {day}, {a_what} to consider.",
        "Browsing in the {part}? Try this {what}.",
    ),
    "attribute": (
        "{A_what}, well liked by shoppers.",
        "Worth a look: {what}.",
        "Trending now: {what}.",
        "One to consider: {a_what}.",
    ),
}
"""The first sentence of an explanation, in its style. A template is used only when the facts
fill every field it names (a tag that only repeats the item's name counts as missing)."""

SUPPORT = {
    "history": (
        "You viewed the {related} recently.",
        "It sits close to the {related} in your history.",
        "It pairs with the {related} you looked at.",
        "It is a step on from the {related}.",
        "Compare it with the {related} you saw.",
        "You looked at {similar} other {leaf} items lately.",
        "It is the kind of {leaf} you opened {similar} times lately.",
        "Your history holds {similar} more of this kind.",
    ),
    "situation": (
        "Handy for a {day} {part}.",
        "A fit for this {season}.",
        "Suited to your {part} browsing.",
        "Good for the {season} ahead.",
        "A {day} idea.",
        "Ready for your next {part} visit.",
    ),
}
"""The second sentence: a fact of this user (history, situation; not the tag or persona, which
the item shares with every user it was retrieved for), from a style other than the first's, so
that one item reads differently for different users. Added only while the text stays within
`MAX_EXPLANATION_CHARS`."""

_FIELD = re.compile(r"\{([A-Za-z_]+)\}")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def category_name(item: CatalogItem) -> str:
    """The item's category as a shopper reads it: the leaf of its path, or 'category 123'."""
    if item.category.isdigit():
        return f"category {item.category}"
    return item.category.split(".")[-1].replace("_", " ")


def describe(item: CatalogItem) -> str:
    """How an explanation names an item: brand and category leaf. An item whose category has no
    name (an id, or none) is named by its own id: in a catalog without text every item of a
    category would otherwise be 'item from category N', so the item of the user's history an
    explanation cites could never be told from the one it explains (`related_item` passes such
    a twin over) and one item's explanations would differ across users only in their situation
    and counts. Its category id is then said by the templates that name the category (`leaf`).

    >>> describe(CatalogItem("7", "electronics.smartphone", "acme", ""))
    'acme smartphone'
    >>> describe(CatalogItem("4711", "12", "", "")), describe(CatalogItem("4711", "", "zeta", ""))
    ('item 4711', 'zeta item 4711')
    """
    leaf = category_name(item) if item.category and not item.category.isdigit() else f"item {item.item_id}"
    return f"{item.brand} {leaf}" if item.brand else leaf


@dataclass(frozen=True)
class Facts:
    item: CatalogItem
    tag: str | None
    persona: str | None
    related: CatalogItem | None
    """An item from the user's history sharing the item's category (or brand)."""
    situation: str
    """'evening, wednesday, autumn' (reasoning/context.situation_text)."""
    similar: int = 0
    """How many other items of the user's history share the item's category."""

    @classmethod
    def of(cls, item: CatalogItem, tag: str | None, persona: str | None, history: Sequence[CatalogItem],
           situation: str) -> Facts:
        """The facts of one recommended item, from the user's (recent) history."""
        similar = sum(1 for other in history if other.item_id != item.item_id and other.category
                      and other.category == item.category)
        return cls(item, tag, persona, related_item(item, history), situation, similar)


def related_item(item: CatalogItem, history: Sequence[CatalogItem]) -> CatalogItem | None:
    """The newest item of the history sharing the item's category, else its brand; one that an
    explanation would name exactly like the item ("you viewed acme phone; this acme phone") is
    no help to the reader and is passed over."""
    name = None
    for same in (lambda o: o.category and o.category == item.category, lambda o: o.brand and o.brand == item.brand):
        for other in history:
            if other.item_id != item.item_id and same(other):
                name = name or describe(item)
                if describe(other) != name:
                    return other
    return None


def _values(facts: Facts) -> dict[str, str]:
    """Every template field the facts fill; a missing fact is absent, not empty."""
    what = describe(facts.item)
    part, day, season = (facts.situation.split(", ") + ["", "", ""])[:3]

    def a(phrase: str) -> str:
        return f"{ARTICLES[phrase[:1].lower() in 'aeiou']} {phrase}"

    values = {"what": what, "a_what": a(what), "A_what": a(what).capitalize(),
              "part": part, "day": day, "season": season,
              "persona": facts.persona or "", "a_persona": a(facts.persona) if facts.persona else "",
              "related": describe(facts.related) if facts.related else "",
              "similar": str(facts.similar) if facts.similar >= 2 else "",
              "leaf": category_name(facts.item) if facts.item.category else ""}
    # A tag that only repeats the item's own name ("acme phone: acme phone") says nothing.
    if facts.tag and not words(facts.tag) <= words(what):
        values["tag"] = facts.tag
    return {k: v for k, v in values.items() if v}


_FIELDS = {t: frozenset(_FIELD.findall(t)) for table in (TEMPLATES, SUPPORT) for texts in table.values() for t in texts}


def _usable(templates: Sequence[str], values: dict[str, str]) -> list[str]:
    return [t for t in templates if _FIELDS[t] <= values.keys()]


def supported_styles(facts: Facts, values: dict[str, str] | None = None) -> list[str]:
    """The styles whose templates the facts can fill, strongest first (`attribute` always)."""
    keys = (_values(facts) if values is None else values).keys()
    return [s for s in STYLES if any(_FIELDS[t] <= keys for t in TEMPLATES[s])]


def template_words() -> set[str]:
    """The words the templates themselves use ("a", "for", "the", ...) and the articles the
    realiser puts before a name: not claims about an item (a catalog whose titles hold "an"
    must not fail "an olay cream").

    >>> {"a", "an", "for"} <= template_words()
    True
    """
    out: set[str] = set(ARTICLES)
    for table in (TEMPLATES, SUPPORT):
        for texts in table.values():
            for text in texts:
                out |= words(_FIELD.sub(" ", text))
    return out


def choose_style(facts: Facts, salt: str, values: dict[str, str] | None = None) -> str:
    """Styles the facts support, strongest first; a stable hash picks among the three strongest,
    so the same item reads differently for different users. `attribute` (which says nothing of
    the user) only when no other style is supported."""
    options = [s for s in supported_styles(facts, values) if s != "attribute"] or ["attribute"]
    return _pick(options[:3], "style", salt)


def _pick(options: Sequence[str], slot: str, salt: str) -> str:
    """A stable choice per (slot, salt), independent between slots (crc32 of "t" + salt and of
    salt are linearly related; a cryptographic hash is not)."""
    digest = hashlib.blake2b(f"{slot}/{salt}".encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "little") % len(options)]


def realise(style: str, facts: Facts, salt: str, values: dict[str, str] | None = None) -> str:
    """The style's first sentence (a template the facts fill, picked by a stable hash of `salt`),
    then a second sentence from another style the facts support, while it fits.

    >>> from features.catalog import CatalogItem
    >>> phone, case = CatalogItem("1", "phone", "acme", "acme phone"), CatalogItem("2", "phone", "zeta", "zeta phone")
    >>> realise("history", Facts(phone, "phones", None, case, "evening, friday, autumn", 3), "u1")
    'You viewed zeta phone; this acme phone is a close match. A friday idea.'
    >>> realise("interest", Facts(phone, "acme phone", None, None, ""), "u1")  # the tag only repeats the name
    'One to consider: an acme phone.'
    """
    values = _values(facts) if values is None else values
    choices = _usable(TEMPLATES[style], values) or _usable(TEMPLATES["attribute"], values)
    text = _pick(choices, "first", salt).format(**values)
    seconds = [t for other in supported_styles(facts, values) if other != style
               for t in _usable(SUPPORT.get(other, ()), values)]
    if seconds:
        more = f"{text} {_pick(seconds, 'second', salt).format(**values)}"
        if len(more) <= MAX_EXPLANATION_CHARS:
            text = more
    return text


class Explainer:
    def __init__(self, catalog: Catalog, tags: Sequence[str], personas: Sequence[str]) -> None:
        self.catalog = catalog
        vocabulary: set[str] = set()
        for item in catalog.items.values():
            vocabulary |= words(describe(item)) | words(item.text)
        for phrase in list(tags) + list(personas):
            vocabulary |= words(phrase)
        # Words the templates themselves use ("a", "for", "the", ...) are not claims, even when
        # some brand is spelled that way.
        self.entity_words = vocabulary - template_words() - {"item", "from", "category", "shopper"}
        self.llm_attempts = 0
        self.llm_rejected = 0
        """LLM-written explanations that failed the check (the grounded text served instead)."""

    def check(self, text: str, facts: Facts) -> tuple[bool, str | None]:
        """Faithful when every catalog or time word it uses is grounded in the facts."""
        grounded = words(describe(facts.item)) | words(facts.item.text) | words(facts.situation)
        if facts.tag:
            grounded |= words(facts.tag)
        if facts.persona:
            grounded |= words(facts.persona)
        if facts.related is not None:
            grounded |= words(describe(facts.related)) | words(facts.related.text)
        if facts.similar:
            # "You opened 3 category 12 items": the count is this user's, even where some item
            # or category of the catalog has "3" for an id.
            grounded.add(str(facts.similar))
        for word in words(text):
            if (word in self.entity_words or word in TIME_WORDS) and word not in grounded:
                return False, f"{word!r} is not in the item, the tags, the history or the situation"
        return True, None

    def explain(self, facts: Facts, salt: str, writer=None) -> tuple[str, str, bool]:
        """(style, text, faithful). `writer(style, facts) -> str | None` is an LLM path; its text
        is used only when it is plain text (contracts/text.py) and passes the check, otherwise
        the grounded realisation is (cut to `MAX_EXPLANATION_CHARS`)."""
        values = _values(facts)
        style = choose_style(facts, salt, values)
        if writer is not None:
            self.llm_attempts += 1
            text = writer(style, facts)
            # Markup, a link or a run-on answer is rejected, not repaired: the grounded text serves.
            if text and is_plain(text, MAX_EXPLANATION_CHARS) and self.check(text, facts)[0]:
                return style, text, True
            self.llm_rejected += 1
        text = plain_text(realise(style, facts, salt, values), MAX_EXPLANATION_CHARS)
        return style, text, self.check(text, facts)[0]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over words.

    >>> rouge_l("a b c d", "a c d e")
    0.75
    >>> rouge_l("x", "y")
    0.0
    """
    x, y = a.lower().split(), b.lower().split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def diversity(texts_by_item: dict[str, list[str]], max_pairs: int = 200) -> float | None:
    """1 - mean pairwise ROUGE-L among explanations of the same item (items with >= 2)."""
    scores = []
    for texts in texts_by_item.values():
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))][:max_pairs]
        scores += [rouge_l(texts[i], texts[j]) for i, j in pairs]
    return 1.0 - sum(scores) / len(scores) if scores else None
