"""Classification instructions: two answer colours and a condition, in the ways people write them.

"Show blue if the picture has a cat, otherwise show black" is the paper's template; people also write
"Paint it yellow if there is a toaster, and purple if not", "If there's a giraffe, show brown; else grey",
"Is there a dog? If yes, red; if no, green", "Answer with blue for yes and black for no: is there a cat?",
"Show black unless there is a cat, in which case show white", "Show green if there is no dog, otherwise
red" (a negated condition swaps the colours), "Red means a dog is present, green means it is absent" and
"Look for a dog. Found one: red. None there: green." `parse_classification` finds the two colours (the first
is painted when the category is present) and the category the condition names; colour words inside the
condition ("if there is a red car") belong to the category. A condition that points back ("Does the image
show a dog? Paint it red if it does, green if it doesn't"; "if so", "if there is one", "if found") takes the
category from the earlier question or condition that names it.
"""

from __future__ import annotations

import re

from ..errors import InstructionError
from .encodings import COLORS

# Colour names the model does not know: named in the error instead of being read as a category.
UNKNOWN_COLOURS = ("teal", "violet", "navy", "gold", "golden", "silver", "beige", "turquoise", "maroon", "olive",
                   "lime", "indigo", "crimson", "lavender", "scarlet", "amber", "aqua", "khaki", "tan")
COLOUR_WORDS = "|".join(sorted((*COLORS, *UNKNOWN_COLOURS), key=len, reverse=True))
_PICTURE = r"(?:image|picture|photo|photograph|pic|snapshot|scene|frame|shot|view|input|img)"

# "show", "paint it", "fill the image with", "the output should be", "answer with", ...
_SHOW = (r"(?:show|display|paint|output|return|indicate|use|give(?:\s+me)?|produce|draw|mark|render|generate|fill|"
         r"make|turn|colou?r|respond(?:\s+with)?|answer(?:\s+with)?|reply(?:\s+with)?|print|emit|provide|present|"
         r"shade|light\s+up|go|become|set|(?:should|must|will|shall)\s+be|be)")
_IF = r"(?:if|when|whenever|in\s+case(?:\s+of)?|provided\s+that|in\s+the\s+presence\s+of|as\s+long\s+as)"
_NO = r"(?:\b(?:no|not|none|absent|missing|without|nothing)\b|n't\b)"
# "otherwise", "else", "if not", "if there is none", "if it is absent", "for no", ...
_ELSE = (rf"(?:otherwise|else|or\s+else|in\s+(?:the|any)\s+other\s+case|if\s+(?:the\s+answer\s+is\s+)?no\b|"
         rf"for\s+no\b|if\s+false|(?:if|when)\s+[^,;.]*?{_NO}[^,;.]*?)")


def _slot(name: str) -> str:
    """A colour answer: "red", "it red", "the image red", "with red", "the colour red", "a red block"."""
    return (rf"(?:(?:the\s+)?(?:whole\s+|entire\s+)?(?:{_PICTURE}|output|screen|canvas|result|answer|everything|it|them)"
            rf"\s+)?(?:(?:with|in|using|as|to)\s+)?(?:(?:the|a|an)\s+)?(?:solid\s+|plain\s+|pure\s+|single\s+)?"
            rf"(?:colou?r\s+)?(?P<{name}>{COLOUR_WORDS})\b"
            r"(?:\s+(?:colou?r(?:ed)?|block|image|screen|square|patch|box|background|canvas|picture|output|fill))?")


_C1, _C2 = _slot("c1"), _slot("c2")
_SEP = r"\s*[,;.:]?\s*(?:and\s+|but\s+|or\s+)?"
# After "C1 if COND": ", otherwise (show) C2" | ", and C2 if not" | "; show C2 if there is no cat" | ", C2 if it
# does" (after a negated COND: "green if it doesn't, red if it does"). (Python's re wants distinct group names:
# the four places of the second colour are c2, c2b, c2c and c2d.)
_THEN_ELSE = (rf"(?:{_SEP}{_ELSE}\b[\s,:]*(?:{_SHOW}\s+)?{_C2}|{_SEP}(?:{_SHOW}\s+)?{_slot('c2b')}\s+{_ELSE}"
              rf"|{_SEP}(?:{_SHOW}\s+)?{_slot('c2c')}\s+{_IF}\s+[^,;.]*?{_NO}"
              rf"|{_SEP}(?:{_SHOW}\s+)?{_slot('c2d')}\s+{_IF}\s+(?:so|yes|it\s+(?:does|is|has)|"
              rf"there\s+is(?:\s+one)?)\b)")
_YES = r"(?:yes|present|true|there|found)"
_NO_WORD = r"(?:no|absent|false|not\s+there|not\s+found)"
_MEANS = r"(?:means?|=|->|indicates?|signals?|stands?\s+for)"
# Answer labels before a colon: "Found one: paint red. None there: paint green."
_YES_LABEL = r"(?:yes|present|(?:if\s+)?found(?:\s+(?:one|it|some|any))?|(?:it's|it\s+is)\s+there|seen|visible)"
_NO_LABEL = (r"(?:no|absent|missing|none(?:\s+(?:there|found|seen|at\s+all))?|nothing(?:\s+(?:there|found))?|"
             r"(?:if\s+)?not\s+(?:found|there|present|seen|visible))")
_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    # Is there a dog? If yes, show red, otherwise show green.
    rf"(?P<cond>[^?]+)\?\s*(?:if\s+(?:yes|so|it\s+does|there\s+is|true)|yes\s*[:=-]?|for\s+yes)[\s,:]*"
    rf"(?:{_SHOW}\s+)?{_C1}\s*[,;.]?\s*(?:and\s+|but\s+)?(?:{_ELSE}|no\s*[:=-]?|if\s+no)[\s,:]*(?:{_SHOW}\s+)?{_C2}",
    # (Answer) red for yes and green for no (: is there a dog / , does the image contain a dog).
    rf"(?:{_SHOW}\s+)?{_C1}\s+(?:for|if|means|=|->)\s+{_YES}\b[\s,;]*(?:and\s+|or\s+)?(?:{_SHOW}\s+)?{_C2}\s+"
    rf"(?:for|if|means|=|->)\s+{_NO_WORD}\b",
    # Red means a dog is present, green means it is absent (| otherwise green).
    rf"{_C1}\s+{_MEANS}\s+(?:that\s+)?(?P<cond>[^,;.]+?)(?:{_THEN_ELSE}|{_SEP}{_slot('c2m')}\s+{_MEANS}\s+"
    rf"[^,;.]*?(?:{_NO}|\b(?:one|it|they)\b))",
    # Look for a dog. Found one: paint red. None there: paint green. (The condition is elsewhere.)
    rf"\b{_YES_LABEL}\s*(?:[:=]|->)\s*(?:{_SHOW}\s+)?{_C1}{_SEP}\b{_NO_LABEL}\s*(?:[:=]|->)\s*(?:{_SHOW}\s+)?{_C2}",
    # Show black unless there is a cat, in which case show white.
    rf"(?:{_SHOW}\s+)?{_C2}\s+unless\s+(?P<cond>.+?)\s*[,;.]?\s*(?:in\s+which\s+case|then|if\s+so)[\s,]*"
    rf"(?:{_SHOW}\s+)?{_C1}",
    # (Show) red if the image contains a dog, otherwise (show) green | and green if not.
    rf"{_C1}\s+{_IF}\s+(?P<cond>.+?){_THEN_ELSE}",
    # If there's a giraffe, (then) show brown; otherwise display gray.
    rf"\b{_IF}\s+(?P<cond>.+?)\s*[,;:]?\s*(?:then\s+)?(?:{_SHOW}\s+)?{_C1}{_THEN_ELSE}",
)]

# Where in a condition the category sits ("the image contains a dog" -> "a dog").
_CAT = r"(?P<cat>.+)"
_CONDITION_RULES = [re.compile(p, re.IGNORECASE) for p in (
    rf"(?:\b{_PICTURE}|^it|^this|^the\s+scene)\s+(?:does\s*n[o']t\s+|does\s+not\s+)?(?:contains?|has|have|shows?|"
    rf"includes?|depicts?|features?|displays?)\s+{_CAT}",
    rf"\bthere(?:'s|\s+is|\s+are|\s+exists?|\s+appears?\s+to\s+be|\s+is\s+at\s+least)\s+(?:n[o']t\s+|no\s+)?{_CAT}",
    rf"^(?:(?:does|do)\s+(?:the\s+|this\s+)?{_PICTURE}\s+|(?:you|we|i|one)\s+(?:can(?:no|')?t?\s+|could\s+|"
    rf"do\s*n[o']t\s+)?)?(?:contains?|has|have|shows?|includes?|see|spot|find|notice|detect)\s+{_CAT}",
    rf"^(?:is|are)\s+there\s+{_CAT}",
    rf"^(?:can|could|do)\s+you\s+(?:see|spot|find|detect|notice)\s+{_CAT}",
    r"^(?:is|are)\s+(?P<cat>.+?)\s+(?:present|visible|there|shown|pictured|depicted|in\s+)",
    r"^(?P<cat>.+?)\s+(?:is|are)\s+(?:n[o']t\s+|not\s+)?(?:present|visible|found|detected|there|shown|pictured|"
    r"depicted|in\s+|anywhere|absent|missing)",
    r"^(?P<cat>.+?)\s+(?:exists?|appears?|shows\s+up|can\s+be\s+(?:seen|found))\b",
)]
_NEGATED = re.compile(
    rf"^(?:there\s*(?:'s|\s+is|\s+are)\s+(?:no|not|n't)\b|there\s+(?:is|are)n't\b|(?:the\s+)?{_PICTURE}\s+"
    rf"(?:does\s*n[o']t|does\s+not|has\s+no|contains\s+no)\b|(?:you|we|i)\s+(?:can(?:no|')t|cannot|do\s*n[o']t)\b|"
    rf"no\s+|.*\b(?:is|are)\s*(?:n't|\s+not|\s+absent|\s+missing)\b)", re.IGNORECASE)
# "Tell me whether there is a dog", "Check for a dog", "Look for a dog": the asking words before the condition.
_ASKING = re.compile(rf"^(?:(?:can|could|would)\s+you\s+(?:please\s+)?)?(?:(?:tell\s+me|answer|say|check|see|determine|"
                     rf"decide|find\s+out|look|search|scan|hunt)(?:\s+(?:the\s+|this\s+)?{_PICTURE})?\s+)?"
                     rf"(?:if|whether|for)\s+", re.IGNORECASE)
# "... if it does", "if so", "if there is one", "if found": the condition points back to an earlier one.
_BACK_REFERENCE = re.compile(
    r"^(?:so|yes|true|found|present|not|no|(?:it|they|one)\s+(?:does|do|is|are|has|have|exists?)(?:\s*n't|\s+not)?|"
    r"there\s+(?:is|are)(?:\s*n't|\s+not|\s+no)?(?:\s+(?:one|some|any))?|(?:you\s+)?(?:can\s+)?(?:find|see|spot)"
    r"\s+(?:one|it|any|some))$", re.IGNORECASE)
_NO_BACK = re.compile(r"n't\b|\b(?:not|no)\b", re.IGNORECASE)
# What comes between the earlier condition and the colours: "... a dog? Paint (everything red)", "... and paint".
_DANGLING = re.compile(rf"(?:^|(?<=[.?!;:,])|\s+(?:and|then|so)\b)\s*(?:(?:and|then|please|just)\s+)*"
                       rf"(?:{_SHOW})?[\s,;]*$", re.IGNORECASE)
_LEADING = re.compile(r"^(?:(?:the|a|an|any|some|all|every|each|no|at\s+least\s+one|one\s+or\s+more)\s+)+",
                      re.IGNORECASE)
_TRAILING = re.compile(
    rf"\s+(?:(?:in|on|within|inside|anywhere\s+in|somewhere\s+in)\s+(?:(?:this|the|that|my|given|input)\s+)?{_PICTURE}s?"
    r"\b|anywhere\b|somewhere\b|at\s+all\b|present\b|visible\b|in\s+it\b|in\s+there\b|"
    r"(?:(?:shown|visible|seen|pictured|depicted)\s+)?here\b).*$", re.IGNORECASE)


def _known_colour(name: str) -> str:
    name = name.lower()
    if name not in COLORS:
        raise InstructionError(f"unknown colour {name!r} in the instruction; known colours: {', '.join(COLORS)}")
    return name


def _category(condition: str) -> str | None:
    condition = condition.strip().rstrip("?.!,;: ")
    for rule in _CONDITION_RULES:
        match = rule.search(condition)
        if match:
            condition = match.group("cat")
            break
    cat = _TRAILING.sub("", condition.strip().rstrip("?.!,;: "))
    cat = _LEADING.sub("", cat).strip(" '\"`-")
    return cat or None


def _condition_elsewhere(text: str, match: re.Match) -> str:
    """The condition of "red for yes and green for no: is there a dog?": the text around the colours."""
    rest = (text[:match.start()] + " " + text[match.end():]).strip(" ,;:.?!")
    return rest


def _named_earlier(before: str) -> str | None:
    """The condition an "if it does" points back to: the last earlier sentence that asks or states one."""
    before = _DANGLING.sub("", before)
    for sentence in reversed(re.split(r"(?<=[.?!;:])\s+", before)):
        condition = sentence.strip(" ,;:.?!")
        asked = _ASKING.sub("", condition)
        if asked != condition or any(rule.search(condition) for rule in _CONDITION_RULES):
            return asked
    return None


def parse_classification(text: str) -> tuple[str | None, str, str] | None:
    """(category, colour if present, colour if absent), or None when the text has no classification shape.
    Raises InstructionError for an unknown colour or two names of the same colour."""
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        second = next(value for name, value in match.groupdict().items() if name.startswith("c2") and value)
        present, absent = _known_colour(match.group("c1")), _known_colour(second)
        if COLORS[present] == COLORS[absent]:
            raise InstructionError(f"the two colours of a classification instruction must differ "
                                   f"(got {present!r} and {absent!r})")
        condition = match.groupdict().get("cond") or _condition_elsewhere(text, match)
        condition = _ASKING.sub("", condition.strip())
        negated = bool(_NEGATED.search(condition))
        if _BACK_REFERENCE.match(condition.strip(" ,;:.?!")):  # "Does it have a dog? Red if it does, else green"
            negated = bool(_NO_BACK.search(condition))  # "green if it doesn't"
            condition = _named_earlier(text[:match.start()])
            if condition is None:
                return None, present, absent
            negated ^= bool(_NEGATED.search(condition))  # "Is there no dog? Red if so"
        if negated:
            present, absent = absent, present  # "show green if there is no dog, otherwise red"
        return _category(condition), present, absent
    return None
