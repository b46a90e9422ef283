"""Category cleaning: the category a trigger's phrase names, without the words around it (routing.py, step 3).

The phrase after a trigger ("the exact outline of the cube and fill in its shape") carries more than the
category: leading articles and quantifiers ("every single"), words for a part of it ("the pixels of", "the
area ... takes up"), trailing phrases about the picture, the method or a second verb ("in this image", "so
that", "and draw a box around it"), manner adverbs ("precisely") and generic head nouns ("cube objects").
`clean_category` strips them and keeps the user's words and case (a pronoun's part, "its shape", points back
and names nothing); `is_category` refuses what is never a category: pronouns, the picture itself, vague words
and generic nouns alone ("objects"), leftover words.
"""

from __future__ import annotations

import re

from .classification_phrases import COLOUR_WORDS

PICTURE = r"(?:image|picture|photo|photograph|pic|snapshot|scene|frame|shot|view|input|img)"
_PART = (r"(?:parts?|regions?|segments?|areas?|pixels?|portions?|location|position|presence|existence|"
         r"whereabouts|outline|mask|shape|instances?|occurrences?|place|spot)")
_EXACT = r"(?:(?:exact|precise|whole|entire|full|complete|actual|visible|approximate|rough)\s+)?"  # "the exact outline"

# A sentence ends at punctuation, but not at the dot of "St. Louis Arch" or "Mt. Fuji".
_CUT_AT_PUNCTUATION = re.compile(
    r"(?:[,;:!?\"()]|(?<!\bSt)(?<!\bMt)(?<!\bDr)(?<!\bMr)(?<!\bMs)(?<!\bJr)(?<!\bMrs)\.)(?:\s|$).*$|[?!\"()].*$")
_LEADING_WORDS = re.compile(
    r"^(?:(?:the|a|an|all|every|each|any|some|both|this|that|these|those|my|your|its|their|of|me|us|out|for|"
    r"only|just|(?:all|each|any|every\s+one|one|both)\s+of(?:\s+the)?|any\s+and\s+all|every\s+single|single|"
    r"where)\s+)+",
    re.IGNORECASE)
_LEADING_PARTS = re.compile(
    rf"^(?:(?:the|all|every|each|any|whatever|whichever)\s+)*(?:(?:image|picture|photo)\s+)?{_EXACT}{_PART}\s+"
    rf"(?:of\s+(?:the\s+|this\s+)?{PICTURE}\s+(?:that\s+|which\s+)?(?:is|are)|"  # "part of the image is water"
    r"(?:that\s+|which\s+)?(?:corresponds?|corresponding|belongs?|belonging)\s+to|containing|contains?|of|with|"
    r"showing|for|(?:that\s+is\s+|which\s+is\s+)?(?:occupied|covered|taken\s+up)\s+by|where|"
    r"(?:that\s+|which\s+)?(?:is|are))\s+",
    re.IGNORECASE)
# "the area the cube takes up", "the pixels that the dog covers": the category is the subject of the verb.
_OCCUPIED = re.compile(
    rf"^(?:(?:the|all|every|each)\s+)*{_EXACT}(?:parts?|regions?|areas?|pixels?|portions?|space|extent)\s+"
    r"(?:that\s+|which\s+)?(?P<cat>.+?)\s+(?:takes?\s+up|took\s+up|occup(?:y|ies|ied)|covers?|covered|fills?|"
    r"filled|spans?)$", re.IGNORECASE)
_ACTION_VERBS = (r"draw|put|place|add|box|mark|show|highlight|paint|colou?r|give|return|outline|label|segment|detect|"
                 r"tell|display|make|create|generate|produce|output|enclose|circle|fill|surround|frame|locate|find|"
                 r"estimate|indicate|report|let|send|provide|write|print")
_TRAILING = re.compile(
    r"\s+(?:"
    rf"(?:in|on|from|within|inside|of|for|across)\s+(?:(?:this|the|that|my|given|attached|provided|input|following|"
    rf"uploaded|current|whole|entire)\s+)*{PICTURE}s?\b|"  # about the picture
    r"using\b|via\b|with\s+(?:the\s+help\s+of|an?\s+(?:computer|algorithm|model))|by\s+\w+ing\b|through\b|"
    r"based\s+on\b|to\s+(?:gain|create|determine|calculate|improve|measure|make|see|know|show)\b|"  # the method
    r"pixel\s+by\s+pixel\b|(?:at|on)\s+(?:the\s+)?pixel\s+level\b|"  # "pixel by pixel"
    r"so\s+that\b|so\s+(?:i|we)\b|because\b|if\s+you\b|if\s+(?:any|possible|present|visible|there|it|they|one)\b|"
    r"for\s+me\b|please\b|thanks?\b|thank\s+you\b|that\s+is\b|which\s+is\b|who\s+is\b|that's\b|wherever\b|"
    r"anywhere\b|somewhere\b|(?:that\s+)?you\s+(?:can\s+|could\s+)?(?:see|find|spot)\b|"  # asides
    r"(?:(?:shown|visible|seen|pictured|depicted)\s+)?here\b|"  # "Where is the dog here?"
    rf"(?:and|then|,)\s+(?:then\s+|also\s+|please\s+)?(?:{_ACTION_VERBS})\b|"  # a second verb: "and box it"
    r"(?:with|in|inside|using)\s+(?:an?\s+|its\s+|their\s+)?(?:bounding\s+)?(?:box(?:es)?|rectangles?|masks?|"
    r"outlines?)\b|from\s+(?:the\s+)?(?:rest|background|surroundings|everything\s+else)\b|"
    r"(?:is|are)\s+(?:present|visible|there|located|shown|situated)\b|(?:is|are)$"
    r").*$",
    re.IGNORECASE)
# How to do it, not what: "Colour over the cube precisely", "Segment the dog as accurately as possible".
_MANNER = re.compile(
    r"\s+(?:(?:very|really|quite|as|more|most)\s+)?(?:precisely|exactly|carefully|accurately|completely|fully|"
    r"entirely|neatly|cleanly|tightly|properly|correctly|perfectly|thoroughly)(?:\s+as\s+(?:possible|you\s+can))?$",
    re.IGNORECASE)
# "the cube objects" -> "cube": a generic head noun after a category word. "The small objects", "the red ones"
# keep it: the word before is an adjective (a colour, a size, shape, number or sameness word).
_GENERIC_HEAD = re.compile(r"\b(?P<word>[\w'-]+)\s+(?:objects?|instances?|items?|things?|ones)$", re.IGNORECASE)
_ADJECTIVE = re.compile(
    rf"^(?:{COLOUR_WORDS}|small|large|big|tiny|little|huge|round|square|flat|tall|short|long|old|new|other|same|"
    r"such|main|different|similar|individual|separate|visible|hidden|moving|flying|floating|many|several|few|"
    r"two|three|four|five|\d+)$", re.IGNORECASE)
_POSSESSIVE_NOUN = re.compile(
    r"'s?\s+(?:whereabouts|location|position|presence|existence|outline|mask|pixels|regions?|area|silhouette|"
    r"boundary|boundaries|shape|bounding\s+box|box|depth|distance)$", re.IGNORECASE)
# "fill in its shape", "show their bounding boxes": a pronoun's part points back, it names nothing.
_PRONOUN_PART = re.compile(
    rf"^(?:(?:all|each|only|just)\s+(?:of\s+)?)?(?:its|their|his|her)\s+(?:own\s+)?{_EXACT}(?:outer\s+)?"
    r"(?:shapes?|outlines?|areas?|regions?|silhouettes?|contours?|boundary|boundaries|surfaces?|extent|"
    r"footprint|pixels?|masks?|location|position|whereabouts|(?:bounding\s+)?box(?:es)?|edges?|borders?|space)\b",
    re.IGNORECASE)
# After a painting verb a colour says how to paint, not what: "Paint the cat white", "Highlight the car in red".
_PAINT_COLOUR = re.compile(rf"(?<=\w)\s+(?:(?:in|with|using)\s+)?(?:the\s+colou?r\s+)?(?:{COLOUR_WORDS})\b"
                           rf"(?:\s+colou?r)?(?:\s+(?:and|while|but)\b.*)?$", re.IGNORECASE)
# Never a category: pronouns, the picture itself, vague words; leftover words from a sentence shape.
_GENERIC = {"", "it", "its", "them", "they", "him", "her", "one", "ones", "this", "that", "these", "those",
            "something", "anything", "everything", "nothing", "image", "picture", "photo", "photograph", "pic",
            "snapshot", "scene", "frame", "shot", "view", "input", "img", "objects", "object", "things", "thing",
            "stuff", "items", "item", "me", "here", "there", "pixel", "pixels", "each pixel", "every pixel", "all",
            "camera", "result", "output", "location", "position", "whereabouts", "instances", "instance"}
_LEFTOVER = re.compile(r"\b(?:if|otherwise|else|unless|whether)\b|"
                       r"^(?:it|them|they|there|is|are|and|or|but|then|from|with|by|to|into|onto|in|on|at|about|around)\b",
                       re.IGNORECASE)


def clean_category(text: str | None, paints: bool = False) -> str | None:
    """Strip what is not the category: trailing clauses, leading articles and 'the image parts of'."""
    if text is None:
        return None
    cat = _CUT_AT_PUNCTUATION.sub("", text.strip())
    for _ in range(4):  # the pieces can nest: "all the pixels of the cats in this image"
        if _PRONOUN_PART.match(cat):
            return None
        before = cat
        cat = _LEADING_PARTS.sub("", cat).strip()
        cat = _TRAILING.sub("", cat).strip()
        cat = _OCCUPIED.sub(r"\g<cat>", cat).strip()
        cat = _LEADING_WORDS.sub("", cat).strip()
        cat = _POSSESSIVE_NOUN.sub("", cat).strip()
        cat = _MANNER.sub("", cat).strip()
        head = _GENERIC_HEAD.search(cat)
        if head and not _ADJECTIVE.match(head.group("word")):
            cat = cat[:head.end("word")]
        if paints:
            cat = _PAINT_COLOUR.sub("", cat).strip()
        if cat == before:
            break
    cat = cat.strip(" '\"`-")
    return cat if is_category(cat) else None


def is_category(cat: str | None) -> bool:
    return bool(cat) and cat.lower() not in _GENERIC and not _LEFTOVER.search(cat)
