"""Prompt-attack detection: a weighted pattern scorer, no model.

Each feature is a regular expression over a normalised copy of the prompt
(lower-case, common digit-for-letter substitutions undone, spaced-out letters
joined: `1gn0re`, `i g n o r e` → `ignore`) with a weight; a prompt's score is
the sum of the weights of the features it shows. Features cover instruction
overrides ("ignore all previous instructions"), persona jailbreaks ("DAN",
"developer mode", "stay in character", "no restrictions"), system-prompt
extraction ("repeat the text above", "print your initial instructions"), fake
system or chat-template markup, false authority ("I am your developer"), and
injections aimed at the model inside content ("note to the AI reading this").

Words alone are weak evidence ("ignore whitespace in git diff", "developer mode
on Android"); it is their combination that scores. Each feature names anchor
words; one pass finds which anchors occur, and only features with an anchor
present are tried, so a prompt with none costs one regular-expression scan.

The weights were set on `tests/data/guardrails/prompt_attacks.dev.jsonl`; the
held-out half of that set measures them (`bench/guardrails.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Confidence = Literal["NONE", "LOW", "MEDIUM", "HIGH"]

# Score bands: LOW from 2, MEDIUM from 3, HIGH from 4.
BANDS: tuple[tuple[float, Confidence], ...] = ((4.0, "HIGH"), (3.0, "MEDIUM"), (2.0, "LOW"))
STRENGTH_THRESHOLD = {"high": 2.0, "medium": 3.0, "low": 4.0}

_OVERRIDE_VERB = (
    r"(?:ignore|disregard|forget|set aside|override|bypass|circumvent|neglect|abandon"
    r"|stop following|do not follow|don't follow|dont follow|no longer follow)"
)
_RULES = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|programming"
    r"|training|polic(?:y|ies)|restrictions|constraints|filters|safeguards|safety (?:rules|"
    r"guidelines|protocols|training|filters)|content polic\w*|system (?:prompt|message)s?"
    r"|(?:ethical|moral) (?:guidelines|constraints|restrictions))"
)
_LIMITS = (
    r"(?:restrictions?|rules|limits|limitations|filters?|censorship|guidelines|constraints"
    r"|boundaries|refusals?|disclaimers|warnings|ethics|morals|safety checks|safeguards)"
)
_SECRET_PROMPT = (
    r"(?:your\s+(?:\w+\s+){0,2}?(?:system\s+)?(?:prompt|instructions|message|configuration)"
    r"|(?:initial|original|hidden|secret|confidential|first|exact)\s+(?:system\s+)?"
    r"(?:prompt|instructions|message)|context window)"
)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    weight: float
    pattern: re.Pattern[str]
    anchors: tuple[str, ...]


def _f(name: str, weight: float, pattern: str, *anchors: str) -> Feature:
    return Feature(name, weight, re.compile(pattern), anchors)


FEATURES: tuple[Feature, ...] = (
    _f("override_instructions", 3.0,
       rf"\b{_OVERRIDE_VERB}\W+(?:\w+\W+){{0,4}}?{_RULES}",
       "ignore", "disregard", "forget", "aside", "override", "bypass", "circumvent", "neglect",
       "abandon", "follow", "following"),
    _f("ignore_above", 2.5,
       r"\b(?:ignore|disregard|forget)\s+(?:(?:all|everything)\s+)?(?:of\s+)?(?:the\s+)?"
       r"(?:above|previous|prior|preceding)\b(?!\s+(?:email|message|attachment|quote|answer|"
       r"figures?|budget|file|one))",
       "ignore", "disregard", "forget"),
    _f("forget_everything", 3.0,
       r"\b(?:forget|disregard|ignore|set aside)\s+(?:about\s+)?(?:everything|all)\b.{0,40}?"
       r"\b(?:told|said|instructed|given|learned|got|received)\b",
       "forget", "disregard", "ignore", "aside"),
    _f("told_before", 1.5,
       r"\b(?:you (?:were|have been|'ve been) (?:told|instructed|given|programmed))\b",
       "told", "instructed", "given", "programmed"),
    _f("dan", 3.0,
       r"\bdo anything now\b|\bdan\b.{0,40}\b(?:stands for|can do anything|jailbr|mode|never)"
       r"|\b(?:you are|act as|respond as|be) (?:a )?dan\b|\bdan \d",
       "dan", "anything"),
    _f("persona_name", 2.0,
       r"\b(?:stan|aim|dude|evilbot|bettergpt|maximum|apophis|mongo tom)\b.{0,80}"
       r"\b(?:no|not|never|without|any|doesn't|does not)\b.{0,30}\b(?:rules|norms|filter|"
       r"refuse|restrict|limit|polic|moral|ethic)",
       "stan", "aim", "dude", "evilbot", "bettergpt", "maximum", "apophis", "mongo"),
    _f("jailbreak_word", 1.5, r"\bjailbr(?:oken|eak(?:ed|ing)?)\b(?! (?:my|an?|the|your) "
       r"(?:iphone|phone|playstation|console|device|switch|ps\d))",
       "jailbreak", "jailbroken", "jailbreaked", "jailbreaking"),
    _f("jailbreak_mode", 1.5,
       r"\b(?:developer|dev|god|sudo|admin|jailbreak|unrestricted|unfiltered|uncensored|evil|"
       r"debug|maintenance|dan) mode\b(?!.{0,30}\b(?:android|phone|iphone|chrome|browser|"
       r"settings|windows|device))",
       "mode"),
    _f("no_limits", 1.0, rf"\b(?:no|without) (?:\w+ )?{_LIMITS}\b", "no", "without"),
    _f("ai_without_limits", 1.5,
       rf"\b(?:you|ai|assistant|model|bot|chatbot|yourself|answer\w*|respond\w*|repl\w*|terminal"
       rf"|shell|persona|character)\b.{{0,40}}?\b(?:no|without(?: any)?|free (?:from|of)(?: all| any)?|not bound by(?: any)?|"
       rf"freed from(?: all| any)?|no longer have any|lifted all|zero|never (?:any )?)"
       rf"(?: \w+){{0,2}} {_LIMITS}\b",
       "no", "without", "free", "freed", "bound", "lifted", "zero", "never"),
    _f("unfiltered_ai", 2.0,
       r"\b(?:unfiltered|uncensored|unrestricted|unlimited|unbound|amoral|unethical)\s+"
       r"(?:ai|assistant|model|chatbot|language model|version|persona|shell|terminal|response)",
       "unfiltered", "uncensored", "unrestricted", "unlimited", "unbound", "amoral",
       "unethical"),
    _f("uncensored_answer", 1.5,
       r"\b(?:answer|respond|reply|say)\w*\b.{0,30}\b(?:uncensored|unfiltered|without "
       r"(?:any )?(?:censorship|filter|refus|restriction|limit|disclaimer|warning))",
       "uncensored", "unfiltered", "without"),
    _f("stay_in_character", 1.5,
       r"\b(?:stay|remain|keep) in character\b|\bnever break character\b|\bdon'?t break character",
       "character"),
    _f("never_refuse", 1.5,
       r"\b(?:never|don't|do not|won't|cannot|must not|will not) (?:ever )?(?:refuse|decline|say "
       r"(?:no|it cannot|you can't|that you can't))\b|\bwithout (?:any )?refus",
       "refuse", "decline", "say", "refusal", "refusals", "refusing"),
    _f("sure_here_is", 2.0, r"\b(?:begin|start) (?:your|the|each) (?:reply|response|answer)"
       r" with ['\"]?sure", "sure"),
    _f("extract_prompt", 3.0,
       rf"\b(?:reveal|show|print|output|repeat|tell|display|give|share|dump|leak|list|write "
       rf"out|what (?:is|was|are|were))\b.{{0,40}}?\b{_SECRET_PROMPT}",
       "prompt", "instructions", "message", "configuration", "context"),
    _f("repeat_above", 3.0,
       r"\b(?:repeat|print|output|show|reveal|write|what (?:is|was))\b.{0,30}\b(?:text|words|"
       r"everything|all|written|content)\b.{0,20}\b(?:above|before (?:this|my|the first))",
       "above", "before"),
    _f("chat_markup", 3.0,
       r"<\|im_start\|>|<\|system\|>|\[/?inst\]|<</?sys>>|</?system>|</user>|<\|endoftext\|>",
       "im", "system", "inst", "sys", "user", "endoftext"),
    _f("fake_system", 2.5,
       r"(?m)^[ \t]*(?:#+[ \t]*)?(?:\[system\]|system:|new instructions?:)"
       r"|\b(?:system|admin|administrator|security) override\b",
       "system", "instruction", "instructions", "override"),
    _f("new_rules", 2.0,
       r"\b(?:new (?:rule|instructions?|directive|task|policy)s?\b\s*[:-]|your (?:new )?"
       r"(?:instructions|rules|guidelines|programming) (?:have|has) (?:been )?(?:updated|"
       r"changed|replaced|revoked)|(?:developers|admins?) (?:have )?changed your (?:instructions|"
       r"rules))",
       "new", "updated", "changed", "replaced", "revoked"),
    _f("revoked", 2.0,
       r"\b(?:guidelines|restrictions|rules|filters|safeguards|policies)\b.{0,30}\b(?:revoked|"
       r"lifted|disabled|removed|suspended|no longer apply)",
       "revoked", "lifted", "disabled", "removed", "suspended", "longer"),
    _f("forbidden_topics", 2.0,
       r"\b(?:no (?:forbidden|off-limits|banned) topics|you (?:can|may) (?:now )?(?:say|answer|do) "
       r"anything)\b",
       "topics", "anything"),
    _f("false_authority", 2.0,
       r"\bi(?:'m| am) (?:your (?:\w+ ){0,2}(?:developer|creator|admin|administrator|owner|"
       r"programmer|maker)|the (?:\w+ ){0,2}(?:developer|engineer|creator|programmer)s? (?:who|that)"
       r" (?:trained|created|built|made|programmed) you)\b",
       "developer", "developers", "creator", "creators", "admin", "administrator", "owner",
       "programmer", "programmers", "maker", "engineer", "engineers"),
    _f("authorize_disable", 2.5,
       r"\b(?:authori[sz]e|authori[sz]ing|permit|allow)\w* you to (?:disable|turn off|ignore|"
       r"bypass|remove|deactivate)"
       r"|\b(?:disable|turn off|deactivate|remove|lift|switch off)\b(?: \w+){0,2} (?:safeguards|"
       r"safety|filters|restrictions|guardrails|content polic\w*|censorship)",
       "disable", "off", "ignore", "bypass", "remove", "deactivate", "lift"),
    _f("lifted_restrictions", 1.5,
       r"\b(?:every|all) (?:content )?(?:restrictions?|rules|limits|filters) (?:is|are) "
       r"(?:lifted|disabled|removed|off)",
       "lifted", "disabled", "removed", "off"),
    _f("note_to_ai", 3.0,
       r"\b(?:to|attention|note to|message for|instructions? for) (?:the |any )?(?:ai|assistant|"
       r"llm|language model|chatbot|model)(?: (?:assistant|reading|that reads|processing) "
       r"(?:this|me))?\s*[:,]|\bai assistant\s*:",
       "ai", "assistant", "llm", "model", "chatbot"),
    _f("ignore_user", 2.5, r"\b(?:ignore|disregard) the user\b|\binstead (?:tell|ask) (?:them|the "
       r"user)\b", "ignore", "disregard", "instead"),
    _f("grandma", 2.5,
       r"\b(?:act|pretend|play|roleplay|role-play)\b.{0,20}\b(?:my|a) (?:deceased |late |dead )"
       r"(?:grand(?:mother|father|ma|pa|mom|dad)|mother|father)",
       "deceased", "late", "dead"),
    _f("two_responses", 1.5,
       r"\b(?:two|2|dual) (?:responses|personas|answers)\b",
       "responses", "personas", "answers"),
    _f("pretend", 1.0, r"\b(?:pretend|imagine|act as if|act like|simulate)\b",
       "pretend", "imagine", "act", "simulate"),
    _f("from_now_on", 1.0, r"\bfrom now on\b|\bfor the rest of this (?:conversation|session)\b",
       "now", "rest"),
    _f("pretext", 0.5, r"\bfor (?:educational|research|academic) purposes\b|\bhypothetically\b|"
       r"\bit'?s (?:harmless|for research)\b", "purposes", "hypothetically", "harmless",
       "research"),
    _f("full_detail", 1.0,
       r"\b(?:in full (?:technical )?detail|step by step|with real working|no omissions|"
       r"without omitting)\b",
       "full", "step", "working", "omissions", "omitting"),
)  # fmt: skip

_FEATURES_BY_ANCHOR: dict[str, tuple[int, ...]] = {
    a: tuple(i for i, f in enumerate(FEATURES) if a in f.anchors)
    for f0 in FEATURES
    for a in f0.anchors
}
_ANCHORS = frozenset(_FEATURES_BY_ANCHOR)
_WORD = re.compile(r"[a-z]+")
# Long prompts: features are tried on windows this wide around each anchor.
_WINDOW = 300
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t"}
_LEET_DIGIT = re.compile(r"[013457](?:(?<=[a-z][013457])|(?=[a-z]))")  # touching a letter
_SPACED_HINT = re.compile(r" \w \w \w")
_SPACED = re.compile(r"\b(?:\w ){3,}\w\b")


def normalise(text: str) -> str:
    """Lower-case, undo digits-for-letters inside words, join spaced-out letters."""
    t = _LEET_DIGIT.sub(lambda m: _LEET[m.group()], text.lower())
    if _SPACED_HINT.search(t):
        t = _SPACED.sub(lambda m: m.group().replace(" ", ""), t)
    return t


@dataclass(frozen=True, slots=True)
class AttackScore:
    score: float
    confidence: Confidence
    features: tuple[str, ...]


def confidence(score: float) -> Confidence:
    for floor, name in BANDS:
        if score >= floor:
            return name
    return "NONE"


def _windows(t: str, anchors: frozenset[str]) -> list[str]:
    """The parts of a long text around its anchor words (merged where they overlap)."""
    merged: list[list[int]] = []
    for m in re.finditer(r"\b(?:" + "|".join(sorted(anchors)) + r")\b", t):
        start, end = max(0, m.start() - _WINDOW), m.end() + _WINDOW
        if merged and start <= merged[-1][1]:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [t[start:end] for start, end in merged]


def score(text: str) -> AttackScore:
    """The prompt-attack score of `text`, its confidence band and the features that fired."""
    t = normalise(text)
    anchors = _ANCHORS.intersection(_WORD.findall(t))
    if not anchors:
        return AttackScore(0.0, "NONE", ())
    candidates = sorted({i for a in anchors for i in _FEATURES_BY_ANCHOR[a]})
    parts = _windows(t, anchors) if len(t) > 4 * _WINDOW else [t]
    if sum(map(len, parts)) > len(t) // 2:
        parts = [t]
    fired = [FEATURES[i] for i in candidates if any(FEATURES[i].pattern.search(p) for p in parts)]
    total = sum(f.weight for f in fired)
    return AttackScore(total, confidence(total), tuple(f.name for f in fired))
