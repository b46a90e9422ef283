"""Instruction routing: which task an instruction asks for and which category it names (docs/DESIGN.md 6).

InstructCV was trained on fixed templates ("Segment the %category%") and on paraphrases of them; people
write requests ("Could you please box the red car?"), questions ("Where are the traffic lights?", "How far
is the wall?") and conditions ("Paint it yellow if there is a toaster, and purple if not"). `route` reads
an instruction in four steps:

1. English? Other languages are refused with a message saying so (`language.py`); `task=` still forces one.
2. Classification has a sentence shape, not a keyword: two answer colours and a condition, in any order
   ("show C1 if X, otherwise C2", "C1 if X, and C2 if not", "if X, C1; else C2", "Is there X? If yes C1, if
   no C2", "C1 for yes and C2 for no"). The category comes from the condition ("there is a toaster").
3. Otherwise each task has trigger words (`_RULES`), in tiers: words that name the task (segment, mask,
   detect, bounding box, locate, depth, how far) beat segmentation verbs (highlight, paint, the pixels of),
   which beat weak verbs (find, where, spot, closest), which beat words any task could mean (show, mark,
   outline, "is there"). Within a tier the earliest trigger wins. The category is the first phrase after a
   trigger of the chosen task (or, failing that, of any task) that is a real category (`category_phrases.py`):
   never a pronoun or a pronoun's part ("its shape"), never leftover words ("if", "otherwise", the trigger).
4. Nothing but words any task could mean, or a bare noun phrase ("the red balls")? The task stays open
   (`task=None`, `decided_by=None`): the pipeline reads it from what the model paints (`painted.py`).

Categories keep the user's words and case ("Detect Berkeley's Sather Tower" -> "Berkeley's Sather Tower"),
attributes and plurals included ("all traffic lights" -> "traffic lights", "the small green cube" -> "small
green cube"); leading articles, quantifiers, trailing phrases about the picture or the method ("in this
image", "using a computer vision algorithm", "and draw a box around it"), manner adverbs ("precisely") and
generic head nouns ("the cube objects") are dropped. Depth has no category unless a place or object is
named ("How far is the wall?" -> "wall").

A segmentation or detection instruction with no category, or text that fits no task and is no noun phrase,
is an `InstructionError`, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import InstructionError
from .category_phrases import PICTURE, clean_category, is_category
from .classification_phrases import parse_classification
from .encodings import TASKS
from .language import foreign_language

# Only the start of an over-long instruction is read: the model's text encoder sees about this much (77 CLIP
# tokens), and it bounds the regular expressions' work on adversarial text.
MAX_ROUTED_CHARS = 400
# The default colours when classification is forced, or read from the painting, for an instruction that
# names none (the paper's example).
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
    """What an instruction asks for. Colours are set for classification only. `task` is None while it is
    undecided (the text leaves it open); `decided_by` says how it was decided: "text", "forced" (task=) or
    "painted" (read from the model's painting, see `decided`)."""

    task: str | None
    category: str | None
    color_if_present: str | None = None
    color_if_absent: str | None = None
    decided_by: str | None = "text"

    @property
    def undecided(self) -> bool:
        return self.task is None

    def decided(self, task: str) -> Route:
        """This route with the task read from the painting (classification gets the default colours)."""
        colors = (self.color_if_present, self.color_if_absent)
        if task != "classification":
            colors = (None, None)
        elif None in colors:
            colors = DEFAULT_COLORS
        return replace(self, task=task, color_if_present=colors[0], color_if_absent=colors[1], decided_by="painted")


# --- trigger words per task -------------------------------------------------------------------------------
# Verbs that are also nouns or other words ("colour", "mark", "box") only trigger at the start of a clause.
_CLAUSE = "(?:^|" + "|".join(rf"(?<={w} )" for w in (
    r"[.;:!?,]", r"\band", r"\bthen", r"\byou", r"\bto", r"\bme", r"\bus", r"\bjust", r"\balso", r"\bplease")) + ")"
_OBJ = r"(?:\s*[:-]?\s+(?P<cat>.+))?"  # the category, where there is one ("Detection: kites")
_FILL = (r"(?:\s+(?:out|of|for|on|over|around|covering|that|which|contains?|containing|corresponds?\s+to|"
         r"corresponding\s+to|belongs?\s+to|belonging\s+to|showing|shows?|covers?|includes?|with|masks?|maps?)\b)*")
EXPLICIT, SEGMENTATION_VERB, WEAK, ANY_TASK = range(4)  # tiers, strongest first
SEG, DET, DEPTH = "segmentation", "detection", "depth"
# "Where is the van parked?": the last word says where it is, it is not part of the category.
_POSITION_VERBS = (r"hiding|parked|sitting|standing|lying|located|placed|kept|hanging|sleeping|playing|running|"
                   r"flying|swimming|situated|positioned|stored|going|now")
_REGION = r"(?P<kw>pixels?|regions?|areas?|parts?|portions?)"
_REGION_OF = (r"(?:belong(?:s|ing)?\s+to|contain(?:s|ing)?|correspond(?:s|ing)?\s+to|covered\s+by|occupied\s+by|"
              r"showing|show|of|with|depicting|(?:are|is)\s+part\s+of|make\s+up|form|cover)")
# "track" and "circle" are also nouns ("the dirt track"): verbs at a clause start only.
_WEAK_DETECT = (r"(?P<kw>(?:find|spot|pinpoint|identify|discern|recogni[sz]e|notice|observe|ascertain|determine|"
                rf"confirm|acknowledge|discover|seek|{_CLAUSE}(?:track|circle))(?:s|ing|ting)?(?:\s+(?:down|out))?|"
                r"(?:look|search|hunt)(?:s|ing)?\s+for|point(?:s|ing)?\s+out)")
_ANY_VERB = (r"(?P<kw>show(?:\s+me)?|display|mark|outline|label|indicate|pick\s+out|point\s+(?:to|at)|reveal|trace|"
             r"tag|visuali[sz]e|check\s+for|see|look\s+at)")
# "I want the red car segmented": the category before a past participle.
_WANT = r"\b(?:want|need|like|have|get)\s+(?P<cat>.+?)\s+"
_FROM_CAMERA = r"(?:\s+(?:from|to)\s+(?:the\s+|this\s+)?(?:camera|viewer|lens|observer|photographer|me|us)\b.*)?$"

# (task, tier, pattern, paints): `kw` is the trigger, `cat` the category; None as task: any task could be
# meant. `paints`: the verb paints the category, so a colour after it is how, not what ("Paint the cat white").
_RULES: list[tuple[str | None, int, str, bool]] = [
    (SEG, EXPLICIT, rf"\b(?P<kw>segment(?:s|ed|ing|ation)?|masks?|masked|masking)\b{_FILL}{_OBJ}", False),
    (SEG, EXPLICIT, rf"{_WANT}(?P<kw>segmented|masked)\b", False),
    (DET, EXPLICIT, rf"{_WANT}(?P<kw>detected|boxed|locali[sz]ed|located)\b", False),
    (DET, EXPLICIT, r"\b(?P<kw>(?:bounding\s+)?box(?:es)?|rectangles?|bbox(?:es)?)\s+(?:around|for|on|over|"
                    r"enclosing|surrounding|to)\s+(?P<cat>.+)", False),
    (DET, EXPLICIT, r"\b(?P<kw>(?:bounding\s+box(?:es)?|bbox(?:es)?))\s+of\s+(?P<cat>.+)", False),
    (DET, EXPLICIT, r"\b(?P<kw>detect(?:s|ed|ing|ion|ions|or)?)\b(?:\s+(?:of|for|on|in)\b)*" + _OBJ, False),
    # "Box the cars", "Box in every cube", "Frame each dog"; not the nouns ("Frame 3 shows a dog").
    (DET, EXPLICIT, rf"{_CLAUSE}(?P<kw>box(?:\s+(?:in|up))?|bbox|enclose|bound|frame)\b(?!\s+(?:around|for|on|over|of|"
                    rf"to|is|are|shows?|has|contains?)\b|\s+\d)\s+(?P<cat>.+)", False),
    (DET, EXPLICIT, r"\b(?P<kw>bounding\s+(?:box(?:es)?|rectangles?)|bbox(?:es)?|(?:draw|put|place|add)\s+"
                    r"(?:an?\s+)?(?:box(?:es)?|rectangles?))\b", False),
    (DET, EXPLICIT, r"\b(?P<kw>locali[sz](?:e|es|ed|ing|ation)|locat(?:e|es|ed|ing|ion|ions))\b(?:\s+(?:of|for)\b)*"
                    + _OBJ, False),
    (DEPTH, EXPLICIT, r"\b(?P<kw>depth)(?:\s+(?:map|image|estimation|estimate|values?|information|profile))?"
                      r"\s+(?:for|of|at|to|in)\s+(?P<cat>.+)", False),
    (DEPTH, EXPLICIT, r"\b(?P<kw>depth|disparity|3d\s+(?:structure|layout|shape|geometry|reconstruction)|"
                      r"spatial\s+layout|range\s+map)\b", False),
    (DEPTH, EXPLICIT, rf"\b(?P<kw>how\s+(?:far|close|distant|deep)(?:\s+away)?)\s+(?:is|are)\s+(?P<cat>.+?){_FROM_CAMERA}",
     False),
    (DEPTH, EXPLICIT, r"\b(?P<kw>how\s+(?:far|deep|close|distant))\b", False),
    (DEPTH, EXPLICIT, r"\b(?<!in the )(?P<kw>distances?)\s+(?:from\s+(?:the\s+)?(?:camera|viewer|lens)\s+)?"
                      r"(?:to|of)\s+(?P<cat>.+)", False),
    (DEPTH, EXPLICIT, r"\b(?<!in the )(?P<kw>distances?|(?:near|close)\s+(?:and|or|vs\.?|versus)\s+far)\b", False),
    (DEPTH, EXPLICIT, r"\b(?:which|what)\b.*\b(?P<kw>(?:are|is)\s+(?:near|close)\b.*\bfar)\b", False),
    (SEG, SEGMENTATION_VERB, rf"\b(?P<kw>highlight(?:s|ed|ing)?|silhouettes?|isolate|separate|cut\s+out|extract|divide|"
                             rf"delineate|colou?r\s+in|fill\s+in|shade\s+in|black\s+out)\b{_FILL}{_OBJ}", True),
    (SEG, SEGMENTATION_VERB, rf"{_CLAUSE}(?P<kw>paint|colou?r|shade)\b(?:\s+(?:over|in)\b)?\s+(?P<cat>.+)", True),
    (SEG, SEGMENTATION_VERB, rf"\b{_REGION}(?:\s+(?:of|in)\s+(?:the|this)\s+{PICTURE})?\s+(?:that\s+|which\s+)?"
                             rf"{_REGION_OF}\s+(?P<cat>.+)", False),
    (DET, WEAK, rf"\b(?P<kw>where(?:\s+(?:exactly|precisely|actually))?(?:'s|\s+is|\s+are|\s+can\s+i\s+(?:find|see)))"
                rf"\s+(?:exactly\s+|precisely\s+|actually\s+)?(?P<cat>.+?)(?:\s+(?:{_POSITION_VERBS}))?\s*(?:[?.!].*)?$",
     False),
    (DET, WEAK, r"\b(?P<kw>where)\s+(?P<cat>.+?)\s+(?:is|are|sits?|stands?|lies|can\s+be\s+(?:found|seen))\b", False),
    (DET, WEAK, rf"\b{_WEAK_DETECT}\b{_OBJ}", False),
    # "Mark the dog with boxes": a verb any task could mean, done with boxes.
    (DET, WEAK, r"\b(?:with|using|as)\s+(?:an?\s+|their\s+|its\s+)?(?:tight\s+|bounding\s+)?"
                r"(?P<kw>box(?:es)?|rectangles?|bbox(?:es)?)\b", False),
    (DEPTH, WEAK, r"\b(?P<kw>closer|closest|nearer|nearest|farther|farthest|further\s+away|furthest)\b", False),
    (None, ANY_TASK, rf"{_CLAUSE}{_ANY_VERB}\b\s+(?P<cat>.+)", True),
    (None, ANY_TASK, r"^(?P<kw>(?:is|are)\s+there)\s+(?P<cat>.+)", False),
    (None, ANY_TASK, rf"^(?P<kw>(?:does|do)\s+(?:the\s+|this\s+)?{PICTURE}\s+(?:contain|have|show|include|depict|"
                     rf"feature))\s+(?P<cat>.+)", False),
    (None, ANY_TASK, rf"^(?P<kw>is|are)\s+(?P<cat>.+?)\s+(?:present|visible|there|shown|pictured|depicted|"
                     rf"in\s+(?:the|this)\s+{PICTURE})\b", False),
]
_COMPILED = [(task, tier, re.compile(pattern, re.IGNORECASE), paints) for task, tier, pattern, paints in _RULES]


@dataclass(frozen=True)
class _Trigger:
    task: str | None
    tier: int
    keyword: tuple[int, int]  # span of the trigger words
    phrase: str | None  # the raw text after it (the category before cleaning)
    phrase_start: int
    paints: bool


def _triggers(text: str) -> list[_Trigger]:
    """Every rule's first match in `text`, in the order they decide: tier, then position, then rule order."""
    found = []
    for index, (task, tier, rule, paints) in enumerate(_COMPILED):
        match = rule.search(text)
        if match:
            cat = match.groupdict().get("cat")
            found.append((tier, match.start("kw"), index, _Trigger(task, tier, match.span("kw"), cat,
                                                                     match.start("cat") if cat else -1, paints)))
    return [trigger for *_, trigger in sorted(found, key=lambda item: item[:3])]


# --- the category --------------------------------------------------------------------------------------
def _category(triggers: list[_Trigger], used: tuple[int, int], text: str) -> str | None:
    """The first real category after these triggers that does not reach into the deciding trigger `used`."""
    for trigger in triggers:
        cat = clean_category(trigger.phrase, trigger.paints)
        if cat is None:
            continue
        start = text.find(cat, max(trigger.phrase_start, 0))
        if start < used[1] and start + len(cat) > used[0]:
            continue  # "Find the umbrella and draw a box around it": not "umbrella and draw a box around it"
        return cat
    return None


_PRONOUN = re.compile(r"^(?:it|them|him|her|this|that|these|those|this\s+one|that\s+one)\b", re.IGNORECASE)
_ASKING_TAIL = re.compile(r"[\s,:;.!?\u2014-]*(?:(?:can|could|would|will)\s+you|please|now|and)?\s*$", re.IGNORECASE)


def _named_before(text: str, trigger: _Trigger) -> str | None:
    """"Golden Gate Bridge: segment it": a pronoun after the trigger points back to a phrase before it."""
    if not trigger.phrase or not _PRONOUN.match(trigger.phrase):
        return None
    before = text[:trigger.keyword[0]]
    if not re.search(r"[,:;.!?\u2014-]", before):
        return None  # "Find it and box it": nothing named
    return clean_category(_ASKING_TAIL.sub("", before))


# --- politeness, bare noun phrases, other languages -------------------------------------------------------
_POLITENESS = re.compile(
    r"^(?:(?:hi|hello|hey|dear|greetings)\b[^,.!:]*[,.!:]\s*|(?:please|kindly|pls|now|just|also|ok(?:ay)?,?)\s+|"
    r"(?:can|could|would|will)\s+you\s+(?:please\s+|kindly\s+)?(?:help\s+me\s+(?:to\s+)?|try\s+to\s+)?|"
    r"would\s+you\s+mind\s+|i\s+(?:would|'d)\s+like\s+(?:you\s+)?to\s+|i\s+(?:want|need)\s+(?:you\s+)?to\s+|"
    r"help\s+me\s+(?:to\s+)?|i\s+need\s+(?:some\s+|your\s+)?(?:help|assistance)\s+(?:in|with|to)?\s*|"
    r"let'?s\s+|go\s+ahead\s+and\s+|try\s+to\s+)+",
    re.IGNORECASE)
# A bare noun phrase ("the red balls") names a category; any of these words makes it a sentence instead.
_NOT_A_NOUN_PHRASE = set(
    "what why who whom whose which when how is are was were be am do does did will would can could should shall "
    "i you we he she it they me my your our tell write describe make explain translate generate create draw "
    "convert turn remove add change replace give compose summarize summarise caption count name list read sing "
    "play let help hello hi hey thanks thank yes no ok okay crop resize rotate flip blur sharpen enhance colorize "
    "colourise upscale denoise edit apply open close save run go stop".split())


def _noun_phrase(text: str) -> str | None:
    words = re.findall(r"[^\W\d_][\w'-]*", text)
    if not 1 <= len(words) <= 6 or any(w.lower() in _NOT_A_NOUN_PHRASE for w in words):
        return None
    return clean_category(text)


def _no_task_message(instruction: str) -> str:
    examples = "; ".join(f'{task}: "{EXAMPLES[task][0]}"' for task in TASKS)
    return f"no task fits the instruction {instruction!r}; try e.g. {examples} (or force one with --task / task=)"


def _normalize(text: str) -> str:
    """Straight quotes, single spaces, no surrounding quotes."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip("\"'` ").strip()


# --- the router ------------------------------------------------------------------------------------------
def route(instruction: str, task: str | None = None) -> Route:
    """Find the task and category an instruction asks for; `task=` forces the task.

    Returns a Route with `task=None` when only the painting can tell (see the module docstring). Raises
    InstructionError for an empty or non-English instruction, one that fits no task (the message lists
    examples), an unknown colour name, or a segmentation/detection instruction that names nothing to find.
    """
    if task is not None and task not in TASKS:
        raise InstructionError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if instruction is None or not str(instruction).strip():
        raise InstructionError("the instruction is empty; say what to do, e.g. \"Segment the cat\"")
    text = _normalize(str(instruction))[:MAX_ROUTED_CHARS]
    core = _POLITENESS.sub("", text) or text
    if task is not None:
        return _forced_route(core, task)
    language = foreign_language(text)
    if language:
        raise InstructionError(f"the instruction {text!r} looks like {language}; the model understands English "
                               f"instructions (e.g. \"{EXAMPLES['segmentation'][0]}\"); --task / task= forces a task")

    classification = parse_classification(core)
    if classification is not None:
        category, present, absent = classification
        if category is None or not is_category(category):
            raise InstructionError(f"the instruction {text!r} does not say what to look for; "
                                   f"e.g. \"{EXAMPLES['classification'][0]}\"")
        return Route("classification", category, present, absent)

    triggers = _triggers(core)
    decisive = [t for t in triggers if t.task is not None]
    if decisive:
        chosen = decisive[0]
        own = [t for t in triggers if t.task == chosen.task]
        category = (_category(own, chosen.keyword, core) or _category(triggers, chosen.keyword, core)
                    or _named_before(core, chosen))
        if category is None and chosen.task != "depth":
            verb = {"segmentation": "segment", "detection": "detect"}[chosen.task]
            raise InstructionError(f"the instruction {text!r} does not say what to {verb}; "
                                   f"e.g. \"{EXAMPLES[chosen.task][0]}\"")
        if chosen.task == "depth" and category and re.match(rf"{PICTURE}s?\b", category, re.IGNORECASE):
            category = None  # "the depth of the image based on its texture" names no place
        return Route(chosen.task, category)

    # Only words any task could mean ("Show me the cat", "Is there a dog?") or a bare noun phrase.
    category = _category(triggers, (0, 0), core) if triggers else _noun_phrase(core)
    if category is None:
        raise InstructionError(_no_task_message(text))
    return Route(None, category, decided_by=None)


def _forced_route(core: str, task: str) -> Route:
    """The task is given: take the category the text names (any task's phrasing), else the text itself
    (minus greetings and articles); an instruction in another language names no category we can read."""
    colors = DEFAULT_COLORS
    try:
        classification = parse_classification(core)
    except InstructionError:
        classification = None
    if classification is not None:
        category, *named = classification
        colors = tuple(named)
    else:
        triggers = _triggers(core)
        same = [t for t in triggers if t.task == task]
        category = _category(same, (0, 0), core) or _category(triggers, (0, 0), core)
        if category is None and not triggers and not foreign_language(core):
            category = clean_category(core)  # "cat" with task="segmentation"
    if task == "classification":
        return Route(task, category, *colors, decided_by="forced")
    if task == "depth" and category and re.match(rf"{PICTURE}s?\b", category, re.IGNORECASE):
        category = None  # as unforced: "the depth of the image in grey levels" names no place
    return Route(task, category, decided_by="forced")
