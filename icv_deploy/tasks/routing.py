"""Instruction routing: which task an instruction asks for and which category it names (DESIGN.md 6).

InstructCV was trained on fixed templates ("Segment the %category%") and on LLM paraphrases of them
("Highlight the image parts corresponding to the cat.", "Can you help me detect the dog?"). Routing is a
table of regular expressions per task, tried in order: the first rule that matches decides the task, and
its named group `cat` is the category. Classification rules also capture the two colour names.

Categories keep the user's words and case ("Detect Berkeley's Sather Tower" -> "Berkeley's Sather Tower");
leading articles and quantifiers are dropped ("the cat" -> "cat", "all trees" -> "trees": plural nouns stay
plural, nothing is singularised), as are trailing phrases about the picture ("in this image") or the method
("using a computer vision algorithm"). Depth has no category unless a place or object is named
("Create a depth map for Stata Center" -> "Stata Center").

An instruction that fits no task is an `InstructionError` listing examples, never a guess; `task=` forces
the task and the category is then extracted as best we can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InstructionError
from .encodings import COLORS, TASKS

# The default colours when classification is forced on an instruction that names none (the paper's example).
DEFAULT_COLORS = ("blue", "black")

EXAMPLES: dict[str, list[str]] = {
    "segmentation": ["Segment the cat", "Highlight all trees", "Can you help me segment the cat?"],
    "detection": ["Detect the dog", "Locate the car in this image", "Draw a bounding box around the bird"],
    "depth": ["Create a monocular depth map", "Estimate the depth of this image",
              "Create a depth map for Stata Center"],
    "classification": ["Show blue if the picture has a cat, otherwise show black",
                       "If there is a dog, show red, else show green"],
}


@dataclass(frozen=True)
class Route:
    """What an instruction asks for. Colours are set for classification only."""

    task: str
    category: str | None
    color_if_present: str | None = None
    color_if_absent: str | None = None


# --- building blocks of the patterns ----------------------------------------------------------------------
_CAT = r"(?P<cat>.+)"
# Words for "the picture" (a depth "of this image" names no place, and "in the photo" is not the category).
_PICTURE = r"(?:image|picture|photo|photograph|pic|snapshot|scene|frame|shot|view|input)"

# Classification: "show <colour1> if <condition>, otherwise show <colour2>" and its reorderings.
_SHOW = (r"(?:show|display|paint|output|return|indicate|use|give|produce|draw|mark|render|generate|"
         r"fill\s+(?:it\s+)?with|make\s+it|turn|color\s+it|colour\s+it|provide(?:\s+the\s+value\s+of)?)")
_IF = r"(?:if|when|whenever|in\s+case(?:\s+of)?|provided\s+that|in\s+the\s+presence\s+of)"
_ELSE = r"(?:otherwise|else|or\s+else|if\s+not|and\s+if\s+not)"  # not a bare "or": "a cat or a dog"


def _color(name: str) -> str:
    # A colour slot: "red", "the colour red", "a red block", "in red", "(paint) the image red", "(paint) it red".
    return (rf"(?:(?:the\s+)?(?:image|picture|output|screen)\s+|it\s+)?"
            rf"(?:the\s+colou?r\s+|colou?r\s+|an?\s+|in\s+)?(?P<{name}>[a-z]+)"
            r"(?:\s+(?:colou?r|block|image|screen|square|patch|box))?")


_C1, _C2 = _color("c1"), _color("c2")
_THEN_ELSE = rf"\s*[,;.]?\s*(?:and\s+|but\s+)?{_ELSE}\b[\s,]*(?:{_SHOW}\s+)?{_C2}\b"

# Rules: (task, pattern). Tried in this order; the first match wins. Order is by specificity: the
# classification sentence shape first, then "depth", then detection's unambiguous words (box, detect),
# then segmentation's words, then "distance / how far" (after segmentation: "Segment the hills in the
# distance"), then the looser "find / locate / spot / where is" family of detection.
_RULES: list[tuple[str, str]] = [
    ("classification", rf"(?P<cond>(?:does|do|is|are)\s+.+?)\?\s*if\s+(?:yes|so)[\s,]*"
                       rf"(?:{_SHOW}\s+)?{_C1}{_THEN_ELSE}"),
    ("classification", rf"{_SHOW}\s+{_C1}\s+{_IF}\s+(?P<cond>.+?){_THEN_ELSE}"),
    ("classification", rf"{_IF}\s+(?P<cond>.+?)\s*[,;]\s*(?:then\s+)?(?:{_SHOW}\s+)?{_C1}{_THEN_ELSE}"),
    ("classification", rf"^{_C1}\s+{_IF}\s+(?P<cond>.+?){_THEN_ELSE}"),
    ("depth", rf"\bdepth(?:\s+(?:map|image|estimation|estimate|values?))?\s+(?:for|of|at)\s+{_CAT}"),
    ("depth", r"\b(?:depth|3d\s+(?:structure|layout|shape)|disparity|spatial\s+layout)\b"),
    ("detection", rf"\b(?:bounding\s+box(?:es)?|box(?:es)?|rectangles?)\s+(?:around|for|on|over|enclosing)\s+"
                  rf"{_CAT}"),
    ("detection", rf"\bdetect(?:s|ed|ing|ion)?(?:\s+(?:of|for|on))?\s+{_CAT}"),
    ("detection", rf"\b(?:box|enclose|bound)\s+{_CAT}"),
    ("segmentation", rf"\bsegments?\s+(?:that\s+)?(?:contain(?:s|ing)?|correspond(?:s|ing)?\s+to|showing|of|"
                     rf"with|for)\s+{_CAT}"),
    ("segmentation", rf"\bsegment(?:ation)?(?:\s+(?:out|of|for|on))?\s+{_CAT}"),
    ("segmentation", rf"\b(?:highlight|mask|masks|masking|outline|isolate|separate|cut\s+out|extract|divide|"
                     rf"delineate|silhouette|colou?r\s+in|shade|paint)(?:\s+(?:out|of|for))?\s+{_CAT}"),
    ("segmentation", rf"\b(?:pixels|regions?|areas?|parts?)\s+(?:that\s+)?(?:belong(?:s|ing)?\s+to|"
                     rf"contain(?:s|ing)?|correspond(?:s|ing)?\s+to|covered\s+by|showing|of)\s+{_CAT}"),
    ("depth", rf"\b(?:how\s+far\s+away\s+(?:is|are)|distance\s+(?:to|of))\s+{_CAT}"),
    ("depth", r"\b(?:distances?|how\s+far|how\s+deep|near\s+(?:and|or)\s+far)\b"),
    ("detection", rf"\b(?:locate|find|spot|pinpoint|identify|discern|recogni[sz]e|notice|observe|ascertain|"
                  rf"determine|confirm|acknowledge|discover|track|point\s+out|search\s+for|look\s+for|"
                  rf"where(?:'s|\s+is|\s+are)?)\s+{_CAT}"),
]
_COMPILED = [(task, re.compile(pattern, re.IGNORECASE)) for task, pattern in _RULES]

# Where in a classification condition the category sits ("the image contains a dog" -> "a dog").
_CONDITION_RULES = [re.compile(p, re.IGNORECASE) for p in (
    rf"(?:\b{_PICTURE}|^it|^this)\s+(?:contains?|has|have|shows?|includes?|depicts?|features?)\s+{_CAT}",
    rf"\bthere(?:'s|\s+is|\s+are|\s+exists?|\s+exsits|\s+appears?\s+to\s+be)\s+{_CAT}",
    rf"^(?:(?:does|do)\s+(?:the\s+|this\s+)?{_PICTURE}\s+|(?:you|we|i)\s+(?:can\s+)?)?"
    rf"(?:contains?|has|have|shows?|includes?|see|spot|find)\s+{_CAT}",
    rf"^(?:is|are)\s+there\s+{_CAT}",
    r"^(?P<cat>.+?)\s+(?:is|are)\s+(?:present|visible|found|detected|there|shown|pictured|depicted|in\s+)",
    r"^(?P<cat>.+?)\s+(?:exists?|appears?|shows\s+up)\b",
)]

# Cleaning a captured category.
_CUT_AT_PUNCTUATION = re.compile(r"[.,;:!?\"](?:\s|$).*$|[?!\"].*$")
_LEADING_WORDS = re.compile(
    r"^(?:(?:the|a|an|all|every|each|any|some|both|this|that|these|those|my|your|its|their|of|"
    r"any\s+and\s+all)\s+)+", re.IGNORECASE)
_LEADING_PARTS = re.compile(
    r"^(?:(?:the|all|every|each|any)\s+)*(?:(?:image|picture|photo)\s+)?(?:parts?|regions?|segments?|areas?|"
    r"pixels?|portions?|location|position|presence|existence|whereabouts|outline|mask|shape|instances?)\s+"
    r"(?:(?:that\s+)?(?:corresponds?|corresponding|belongs?|belonging)\s+to|containing|contains?|of|with|"
    r"showing|for)\s+", re.IGNORECASE)
_TRAILING = re.compile(
    rf"\s+(?:(?:in|on|from|within|inside|of|across)\s+(?:(?:this|the|that|my|given|attached|provided|input)\s+)?"
    rf"{_PICTURE}s?\b|using\b|via\b|with\s+(?:the\s+help\s+of|an?\s+(?:computer|algorithm|model))|"
    r"by\s+\w+ing\b|through\b|based\s+on\b|to\s+(?:gain|create|determine|calculate|improve|measure|make)\b|"
    r"so\s+that\b|if\s+you\b|if\s+(?:any|possible|present|visible)\b|for\s+me\b|please\b|"
    r"that\s+is\b|which\s+is\b|from\s+the\s+background\b|and\s+(?:show|draw|mark|highlight|paint|give|return)\b|"
    r"(?:is|are)\s+(?:present|visible|there)\b|(?:is|are)$).*$",
    re.IGNORECASE)
_POSSESSIVE_NOUN = re.compile(
    r"'s?\s+(?:whereabouts|location|position|presence|existence|outline|mask|pixels|regions?|area|silhouette|"
    r"boundary|boundaries|shape)$", re.IGNORECASE)
_GREETING = re.compile(
    r"^(?:(?:hi|hello|hey|dear)\b[^,.!:]*[,.!:]\s*)?(?:(?:please|kindly)\s+)?"
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:help\s+me\s+)?)?", re.IGNORECASE)
_STARTS_WITH_PICTURE = re.compile(rf"^{_PICTURE}s?\b", re.IGNORECASE)
_GENERIC = {"", "it", "this", "that", "image", "picture", "photo", "photograph", "pic", "snapshot", "scene",
            "frame", "shot", "view", "input", "everything", "objects", "things", "stuff", "items", "me"}


def _normalize(text: str) -> str:
    """Straight quotes, single spaces, no surrounding quotes."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("\"'` ").strip()


def _clean_category(text: str | None) -> str | None:
    """Strip what is not the category: trailing clauses, leading articles and 'the image parts of'."""
    if text is None:
        return None
    cat = _CUT_AT_PUNCTUATION.sub("", text.strip())
    for _ in range(3):  # the pieces can nest: "all the pixels of the cats in this image"
        before = cat
        cat = _TRAILING.sub("", cat).strip()
        cat = _LEADING_PARTS.sub("", cat).strip()
        cat = _LEADING_WORDS.sub("", cat).strip()
        cat = _POSSESSIVE_NOUN.sub("", cat).strip()
        if cat == before:
            break
    cat = cat.strip(" '\"`-")
    return None if cat.lower() in _GENERIC else cat


def _category_from_condition(condition: str) -> str | None:
    condition = condition.strip()
    for rule in _CONDITION_RULES:
        match = rule.search(condition)
        if match:
            return _clean_category(match.group("cat"))
    return _clean_category(condition)


def _checked_color(name: str) -> str:
    name = name.lower()
    if name not in COLORS:
        raise InstructionError(f"unknown colour {name!r} in the instruction; known colours: {', '.join(COLORS)}")
    return name


def _route_from_match(task: str, match: re.Match) -> Route:
    if task == "classification":
        present, absent = _checked_color(match.group("c1")), _checked_color(match.group("c2"))
        if COLORS[present] == COLORS[absent]:
            raise InstructionError(f"the two colours of a classification instruction must differ "
                                   f"(got {present!r} and {absent!r})")
        return Route(task, _category_from_condition(match.group("cond")), present, absent)
    category = _clean_category(match.groupdict().get("cat"))
    if task == "depth" and category and _STARTS_WITH_PICTURE.match(category):
        category = None  # "the depth of the image based on its texture" names no place
    return Route(task, category)


def _no_task_message(instruction: str) -> str:
    examples = "; ".join(f'{task}: "{EXAMPLES[task][0]}"' for task in TASKS)
    return f"no task fits the instruction {instruction!r}; try e.g. {examples} (or force one with --task / task=)"


def route(instruction: str, task: str | None = None) -> Route:
    """Find the task and category an instruction asks for; `task=` forces the task.

    Raises InstructionError for an empty instruction, one that fits no task (the message lists examples),
    an unknown colour name, or a segmentation/detection instruction that names nothing to find.
    """
    if task is not None and task not in TASKS:
        raise InstructionError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if instruction is None or not str(instruction).strip():
        raise InstructionError("the instruction is empty; say what to do, e.g. \"Segment the cat\"")
    text = _normalize(str(instruction))

    matches = [(rule_task, m) for rule_task, rule in _COMPILED if (m := rule.search(text))]
    if task is None:
        if not matches:
            raise InstructionError(_no_task_message(text))
        found = _route_from_match(*matches[0])
        verb = {"segmentation": "segment", "detection": "detect"}.get(found.task)
        if verb and found.category is None:
            raise InstructionError(f"the instruction {text!r} does not say what to {verb}; "
                                   f"e.g. \"{EXAMPLES[found.task][0]}\"")
        return found
    return _forced_route(text, task, matches)


def _forced_route(text: str, task: str, matches: list[tuple[str, re.Match]]) -> Route:
    """The task is given: use that task's own rule if one matches, else borrow the category another rule
    found, else take the instruction itself (minus greetings and articles) as the category."""
    same_task = [m for rule_task, m in matches if rule_task == task]
    if same_task:
        return _route_from_match(task, same_task[0])
    if matches:
        other_task, match = matches[0]
        groups = match.groupdict()
        category = (_category_from_condition(groups["cond"]) if other_task == "classification"
                    else _clean_category(groups.get("cat")))
    else:
        category = _clean_category(_GREETING.sub("", text))
    if task == "classification":
        return Route(task, category, *DEFAULT_COLORS)
    return Route(task, category)
