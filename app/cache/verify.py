"""Does a cached prompt mean the same as a new one? The semantic cache's last check.

An embedding puts "What is 15% of 80?" and "What is 15% of 60?" next to each other: they share
every word but one. Before a semantic hit is served, :func:`mismatch` compares the two prompt
texts (``"role: content"`` lines) on signals that flip a meaning while keeping the words:

- conversation shape: the sequence of roles must be the same, and fenced code blocks (```)
  must be the same but for whitespace: an operator is no word;
- numbers: digits, decimals, percentages, thousands separators, written numbers (zero ..
  twenty, the tens, hundred .. billion) and ordinals (first .. twentieth, 1st, 2nd, ...) are
  compared as multisets: a number on one side only is a difference too;
- negation: the count of negation cues (not, no, never, n't, without, none, nothing, nobody,
  neither, nor, cannot, unless, except, ...), and a word against its negated form
  (available / unavailable, legal / illegal, sugar / sugarless);
- antonyms: a table of common opposite pairs (max/min, increase/decrease, buy/sell, ...) where
  one side has one word of a pair and the other side the other;
- classes where a substitution changes the answer: units (length, mass, volume, temperature,
  data, speed, currency), time words (weekdays, months, relative days, day parts, periods,
  am/pm, seasons), natural and programming languages;
- named entities: capitalised words not at a sentence start, ALL-CAPS acronyms, inner capitals
  (NumPy), words with digits, code-ish identifiers (``node.js``, ``sin(x)``, ``C++``), quoted
  strings, URLs and e-mails; each must appear in the other text (case-insensitively, with a
  one-letter typo allowed on words of five letters or more);
- question words: who / when / where / why must agree, and a wh-question is not a yes/no one;
- swapped roles: the same tokens with two short spans (up to three tokens: a longer one is
  a moved clause) exchanged around an identical, non-empty middle ("from A to B" / "from B to
  A", "7 from 20" / "20 from 7"; not "A or B" / "B or A"), or two shared names in the
  opposite order when both texts hold a directional word (to, from, than, into, ...);
- a single content word replaced by another ("brown rice" / "white rice") that is neither a
  listed synonym, an inflection nor a typo of it. Rewordings that change several words pass:
  the embedding similarity is what judges those;
- an added qualifier: one prompt holds every content word of the other and one or two more,
  each next to a shared content word ("a gift" / "a gift card", "a poem" / "a short poem",
  "flights to Paris" / "cheap flights to Paris"): the added word narrows a noun phrase of the
  other prompt, so the answers differ. A word added away from the shared ones ("explain
  recursion" / "explain recursion simply, please": an adverb at the end) is no qualifier of a
  noun phrase and passes.

Known blind spots: a modifier added as a clause ("a poem that is short"), two
or more content words changed at once, synonyms absent from the small table (each such
paraphrase is refused: the safe side), entities written in lower case that are in no class,
typos that make another real word ("affect" / "effect" passes as a typo), roles changed by
syntax rather than a swap ("I get my deposit back from my landlord" / "my landlord gets my
deposit back"), operators outside fenced code ("x+1" / "x-1"), negation by
vocabulary ("fail to", "lack"), scope ("not only"), roman numerals, a swap combined with any
other edit, and anything that needs world knowledge ("US citizen" / "American citizen" is
refused).

Stdlib only and pure; each text's analysis is memoised (an LRU of 4096 texts), as one cached
prompt meets many new ones. ``bench/semantic_cache.py`` measures the cost per call.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


def _words(spec: str) -> list[str]:
    """The whitespace-separated words of a table written as one string."""
    return spec.split()


_ROLE_LINE = re.compile(r"^(user|assistant|system|developer|tool|function): ?", re.MULTILINE)
_TOKEN_PARTS = r"""(?P<url>https?://[^\s<>"']+|www\.[^\s<>"']+)
    |(?P<quote>"[^"\n]{1,200}"|\u201c[^\u201d\n]{1,200}\u201d|'(?<!\w')[^'\n]{1,200}'(?!\w)
       |`[^`\n]{1,200}`)
    |(?P<num>[$\u20ac\u00a3]?\d[\d,]*(?:\.\d+)?(?:\s?%)?)(?P<suffix>[A-Za-z]+)?
    |(?P<word>[A-Za-z_][\w'\u2019]*(?:[.&/][A-Za-z0-9_]+)*(?:\+\+|\#|\([^()\n]{0,40}\))?)
    |(?P<stop>[.!?:;\n])"""
_TOKEN = re.compile(_TOKEN_PARTS, re.VERBOSE)
# E-mail addresses cost a scan of every word: only texts with an "@" are read for them.
_TOKEN_WITH_EMAIL = re.compile(
    _TOKEN_PARTS.replace("(?P<url>", r"(?P<url>[\w.+-]+@[\w-]+\.[\w.-]+|", 1), re.VERBOSE
)
_FENCED = re.compile(r"```(.*?)(?:```|\Z)", re.DOTALL)
_CODEISH = re.compile(r"[\d._/#+&(]")

_NEGATIONS = frozenset(
    _words(
        "not no never none nothing nobody nowhere neither nor cannot without unless except"
        " excluding non dont doesnt didnt cant wont isnt arent wasnt werent shouldnt couldnt"
        " wouldnt hasnt havent hadnt mustnt neednt aint shant"
    )
)
_NEGATING_PREFIXES = ("un", "non", "in", "im", "il", "ir", "dis")

_SMALL = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    " fifteen sixteen seventeen eighteen nineteen twenty"
)
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80}
_BIG = {"ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINALS = _words(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
    " thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
)
_NUMBER_WORDS: dict[str, str] = {w: str(i) for i, w in enumerate(_SMALL)}
_NUMBER_WORDS.update({w: str(v) for w, v in (_TENS | _BIG).items()})
_NUMBER_WORDS.update({w: f"#{i}" for i, w in enumerate(_ORDINALS) if i})
_NUMBER_WORDS.update({"hundredth": "#100", "thousandth": "#1000", "dozen": "12"})
_ORDINAL_SUFFIXES = frozenset({"st", "nd", "rd", "th"})

_ANTONYM_PAIRS = """
max/min maximum/minimum maximize/minimize maximise/minimise increase/decrease raise/lower
rise/fall up/down in/out before/after more/less more/fewer most/least buy/sell buyer/seller
true/false add/remove enable/disable first/last largest/smallest biggest/smallest
large/small big/small greater/less greater/smaller higher/lower high/low above/below
over/under open/close start/stop start/finish begin/end import/export encrypt/decrypt
encode/decode compress/decompress zip/unzip ascending/descending input/output
upload/download push/pull on/off win/lose winner/loser gain/loss profit/loss
positive/negative plus/minus hot/cold warm/cool warmer/cooler hotter/colder north/south
east/west left/right top/bottom inside/outside internal/external public/private
include/exclude allow/deny allow/block accept/reject approve/reject pass/fail
success/failure valid/invalid safe/dangerous safe/unsafe cheap/expensive cheaper/dearer
fast/slow faster/slower early/late earlier/later old/new oldest/newest young/old
long/short longer/shorter wide/narrow thick/thin heavy/light light/dark strong/weak
easy/hard easier/harder best/worst good/bad better/worse love/hate like/dislike
always/never all/none same/different similar/different agree/disagree lend/borrow
send/receive give/take asset/liability debit/credit deposit/withdraw deposit/withdrawal
income/expense revenue/expense bull/bear bullish/bearish employer/employee
landlord/tenant lessor/lessee parent/child teacher/student client/server husband/wife
male/female men/women man/woman boy/girl day/night morning/evening yesterday/tomorrow
today/tomorrow past/future summer/winter spring/autumn arrival/departure arrive/depart
inbound/outbound incoming/outgoing upstream/downstream uppercase/lowercase upper/lower
horizontal/vertical horizontally/vertically row/column install/uninstall mount/unmount
lock/unlock connect/disconnect attach/detach insert/delete show/hide expand/collapse
wet/dry raw/cooked sweet/sour sweet/savory acidic/alkaline synchronous/asynchronous
sync/async online/offline static/dynamic mutable/immutable frontend/backend read/write
sooner/later inhale/exhale import/export overestimate/underestimate overweight/underweight
maximal/minimal upper/lower entry/exit enter/exit include/omit plaintiff/defendant
creditor/debtor sender/recipient host/guest predator/prey cause/effect
"""
_SYNONYM_GROUPS = """
fix repair mend|quick quickest fast fastest rapid speedy|delete remove erase
big large huge enormous|biggest largest|small little tiny|buy purchase
sign symptom indication|begin start commence|show display list print|simple easy
straightforward|get obtain receive acquire|hard difficult tough|main primary principal
chief key major|end terminate kill finish|car automobile vehicle|build create make generate
|tenant renter|correct proper right accurate|shrink compress reduce|healthy nutritious
|kid child children|help assist|use utilize utilise employ|need require|change modify alter
|find locate|answer reply respond|explain describe|error bug issue problem fault|cost price
|cheap inexpensive affordable|expensive costly pricey|doctor physician|medicine medication
drug|trip journey|vacation holiday|movie film|job work employment|salary pay wage
|choose pick select|picture photo image|rich wealthy|keep store preserve|ask inquire enquire
|allow permit let|method approach technique way|speed velocity|smart intelligent clever
|verify check validate|run execute|folder directory|laptop notebook|phone mobile cellphone
|website site webpage|cancel abort|invoice bill|lawyer attorney|contract agreement
|home house|happy glad|sick ill unwell|stomach belly|fridge refrigerator|buy shop
|begin open|total sum|often frequently|maybe perhaps|mistake error|shut close|speedup
accelerate|town city|woman lady|man guy|child kid|baby infant
"""

_STOPWORDS = frozenset(
    _words(
        """a an the and or but if then else of to in on at by for with from into onto about as
    is are was were be been being am do does did done doing have has had having can could
    would should shall will may might must i me my mine myself you your yours we us our it
    its this that these those there here he she him her his they them their what which who
    whom whose when where why how whats hows wheres whos im ive id youre its so than too
    very just also any some such each other own same only s t please thanks thank hi hello
    hey dear kindly tell know like want wondering wonder question quick mind appreciate
    really assistant sorry bother advance let give need help explain describe understand
    able get got way ok okay well now up out via per is vs versus etc e.g i.e"""
    )
)

_CLASS_WORDS = {
    "length": "km:km kilometer kilometers kilometre kilometres|mile:mi mile miles"
    "|meter:meter meters metre metres|cm:cm centimeter centimeters|mm:mm millimeter"
    " millimeters|foot:ft foot feet|inch:inch inches|yard:yd yard yards",
    "mass": "kg:kg kgs kilogram kilograms kilo kilos|gram:gram grams|mg:mg milligram"
    " milligrams|lb:lb lbs pound pounds|oz:oz ounce ounces|ton:ton tons tonne tonnes|stone:stone",
    "volume": "liter:liter liters litre litres|ml:ml milliliter milliliters millilitre"
    "|gallon:gal gallon gallons|cup:cup cups|tbsp:tbsp tablespoon tablespoons"
    "|tsp:tsp teaspoon teaspoons|pint:pint pints|quart:quart quarts",
    "temperature": "celsius:celsius centigrade|fahrenheit:fahrenheit|kelvin:kelvin",
    "data": "byte:byte bytes|kb:kb kib kilobyte kilobytes|mb:mb mib megabyte megabytes"
    "|gb:gb gib gigabyte gigabytes|tb:tb tib terabyte terabytes|pb:pb petabyte"
    "|bit:bit bits|mbps:mbps|gbps:gbps",
    "time unit": "ns:ns nanosecond nanoseconds|us:microsecond microseconds|ms:ms millisecond"
    " milliseconds|second:sec secs second seconds|minute:minute minutes mins"
    "|hour:hour hours hr hrs hourly|day:day days daily|week:week weeks weekly"
    "|month:month months monthly|quarter:quarter quarterly|year:year years yearly annual"
    " annually|decade:decade decades|century:century centuries",
    "speed": "mph:mph|kph:kph km/h kmh|knot:knot knots",
    "currency": "usd:usd dollar dollars $|eur:eur euro euros \u20ac|gbp:gbp sterling \u00a3"
    "|jpy:jpy yen|cny:cny yuan rmb|inr:inr rupee rupees|chf:chf franc francs|btc:btc bitcoin",
    "weekday": "monday:monday mondays|tuesday:tuesday tuesdays|wednesday:wednesday"
    "|thursday:thursday|friday:friday fridays|saturday:saturday saturdays|sunday:sunday sundays",
    "month": "january:january|february:february|march:march|april:april|june:june|july:july"
    "|august:august|september:september|october:october|november:november|december:december",
    "relative day": "today:today|tomorrow:tomorrow|yesterday:yesterday|tonight:tonight",
    "time of day": "morning:morning mornings|afternoon:afternoon|evening:evening evenings"
    "|night:night nights|noon:noon midday|midnight:midnight",
    "season": "spring:spring|summer:summer|autumn:autumn|winter:winter",
    "week part": "weekday:weekday weekdays|weekend:weekend weekends",
    "language": "|".join(
        f"{w}:{w}"
        for w in _words(
            "english french german spanish italian portuguese dutch swedish norwegian"
            " danish finnish polish russian ukrainian greek turkish arabic hebrew hindi bengali"
            " urdu chinese mandarin cantonese japanese korean vietnamese thai indonesian malay"
            " swahili latin czech hungarian romanian persian farsi tagalog"
        )
    ),
    "programming language": "|".join(
        f"{w}:{w}"
        for w in _words(
            "python java javascript typescript golang kotlin scala haskell ruby php perl"
            " bash powershell sql lua elixir erlang clojure fortran cobol matlab c++ c#"
        )
    ),
}
# Short unit names that are ordinary words or letters elsewhere: units only after a number.
_AFTER_NUMBER = {
    "s": ("time unit", "second"),
    "m": ("length", "meter"),
    "g": ("mass", "gram"),
    "h": ("time unit", "hour"),
    "l": ("volume", "liter"),
    "c": ("temperature", "celsius"),
    "f": ("temperature", "fahrenheit"),
    "k": ("temperature", "kelvin"),
    "min": ("time unit", "minute"),
    "am": ("am/pm", "am"),
    "pm": ("am/pm", "pm"),
    "t": ("mass", "ton"),
    "b": ("data", "byte"),
}
_MAX_SWAPPED = 3  # tokens in a swapped span: roles are short noun phrases
_DIRECTIONAL = frozenset(_words("to from into onto than against instead rather toward"))
_SYMMETRIC = frozenset(_words("and or nor vs versus plus"))  # "A or B" is "B or A"
_ARTICLES_AND_SYMMETRIC = _SYMMETRIC | {"a", "an", "the"}
_SPECIFIC_WH = frozenset({"who", "when", "where", "why"})
_WH = _SPECIFIC_WH | {"what", "which", "how", "whats", "whos", "hows", "wheres"}


def _stem(word: str) -> str:
    """A crude stem: enough to match plurals and -ing/-ed forms of the same word."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _degree_base(stem: str) -> str:
    """A comparative or superlative's base (highest, hotter: high, hot), else the stem."""
    for suffix in ("est", "er"):
        if stem.endswith(suffix) and len(stem) - len(suffix) >= 3:
            base = stem[: -len(suffix)]
            return base[:-1] if base[-1] == base[-2] else base
    return stem


def _pairs(spec: str) -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for pair in spec.split():
        a, b = (_stem(w) for w in pair.split("/"))
        table.setdefault(a, set()).add(b)
        table.setdefault(b, set()).add(a)
    return table


def _groups(spec: str) -> dict[str, frozenset[str]]:
    table: dict[str, frozenset[str]] = {}
    for group in spec.split("|"):
        stems = frozenset(_stem(w) for w in group.split())
        for s in stems:
            table[s] = table.get(s, frozenset()) | stems
    return table


_OPPOSITES = _pairs(_ANTONYM_PAIRS)
_SYNONYMS = _groups(_SYNONYM_GROUPS)
_CLASSES: dict[str, tuple[str, str]] = {
    word: (cls, canon)
    for cls, spec in _CLASS_WORDS.items()
    for entry in spec.split("|")
    for canon, words in [entry.split(":")]
    for word in words.split()
}
_STOP_STEMS = frozenset(_stem(w) for w in _STOPWORDS) | _STOPWORDS


@dataclass(slots=True)
class _Facts:
    """What :func:`mismatch` compares, read from one prompt text."""

    roles: list[str]
    code: list[str]
    tokens: list[str]
    stems: dict[str, str]  # stem -> the first word with that stem
    text: str
    numbers: Counter[str]
    negations: int
    entities: dict[str, str]
    classes: dict[str, set[str]]
    content: dict[str, str]  # content word stem -> the word
    wh: frozenset[str]
    directional: bool


def _number_key(raw: str) -> str:
    percent = raw.endswith("%")
    digits = raw.rstrip("% ").lstrip("$\u20ac\u00a3").replace(",", "")
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".") or "0"
    return digits + ("%" if percent else "")


def _is_shouting(words: list[str]) -> bool:
    upper = [w for w in words if w.isupper() and len(w) > 1]
    return len(upper) > 2 and len(upper) * 2 > len(words)


@lru_cache(maxsize=4096)
def _analyse(prompt: str) -> _Facts:
    """The facts of one prompt text (memoised: a cached prompt is compared many times)."""
    roles = _ROLE_LINE.findall(prompt)
    code = [" ".join(b.split()) for b in _FENCED.findall(prompt)] if "```" in prompt else []
    text = _ROLE_LINE.sub("\n", prompt).replace("\u2019", "'")
    found = (_TOKEN_WITH_EMAIL if "@" in text else _TOKEN).findall(text)
    shouting = _is_shouting([t[4] for t in found if t[4]])
    tokens: list[str] = []
    stems: dict[str, str] = {}
    content: dict[str, str] = {}
    numbers: Counter[str] = Counter()
    entities: dict[str, str] = {}
    classes: dict[str, set[str]] = {}
    negations = 0
    at_start = True
    after_number = False
    for other, quote, num, suffix, raw, stop in found:
        if stop:
            at_start = True
            continue
        if raw:
            word, stem, negation, number, unit, is_content, codeish = _word(raw.lower())
            tokens.append(word)
            stems.setdefault(stem, word)
            if negation:
                negations += 1
            elif number:
                numbers[number] += 1
            elif word == "percent" and after_number:
                numbers[tokens[-2]] -= 1
                numbers[tokens[-2] + "%"] += 1
            if is_content:
                content[stem] = word
            if after_number and word in _AFTER_NUMBER:
                unit = _AFTER_NUMBER[word]
            if unit:
                classes.setdefault(unit[0], set()).add(unit[1])
            elif (codeish or not raw.islower()) and _is_entity(raw, at_start, shouting):
                entities[stem] = raw
            at_start = after_number = False
        elif num:
            key = _number_key(num)
            suffix = suffix.lower()
            if suffix in _ORDINAL_SUFFIXES:
                key = "#" + key
            numbers[key] += 1
            tokens.append(key)
            stems[key] = key
            if num[0] in "$\u20ac\u00a3":
                classes.setdefault("currency", set()).add(_CLASSES[num[0]][1])
            if suffix and suffix not in _ORDINAL_SUFFIXES:
                unit = _AFTER_NUMBER.get(suffix) or _CLASSES.get(suffix)
                if unit:
                    classes.setdefault(unit[0], set()).add(unit[1])
                tokens.append(suffix)
                stems[suffix] = suffix
            at_start, after_number = False, True
        else:
            raw = other or quote
            key = raw.strip("\"'`\u201c\u201d").lower()
            entities[key] = raw
            tokens.append(key)
            stems[key] = key
            at_start = after_number = False
    return _Facts(
        roles=roles,
        code=code,
        tokens=tokens,
        stems=stems,
        text=text.lower(),
        numbers=+numbers,
        negations=negations,
        entities=entities,
        classes=classes,
        content=content,
        wh=_WH.intersection(tokens),
        directional=not _DIRECTIONAL.isdisjoint(tokens),
    )


_WordInfo = tuple[str, str, bool, str | None, tuple[str, str] | None, bool, bool]


@lru_cache(maxsize=65536)
def _word(lower: str) -> _WordInfo:
    """A lower-cased word read once: the word without possessive and apostrophes, its stem,
    whether it negates, the number it writes, its unit or time class, whether it is content,
    whether it looks like code."""
    word = lower[:-2] if lower.endswith("'s") else lower
    word = word.replace("'", "")
    stem = _stem(word)
    negation = word in _NEGATIONS
    number = _NUMBER_WORDS.get(word)
    content = not negation and number is None and stem not in _STOP_STEMS
    codeish = _CODEISH.search(lower) is not None
    return word, stem, negation, number, _CLASSES.get(word), content, codeish


def _is_entity(raw: str, at_start: bool, shouting: bool) -> bool:
    if raw in ("I", "I'm", "I'd", "I've", "I'll"):
        return False
    if _CODEISH.search(raw.rstrip(".")):
        return True
    rest = raw[1:]
    if rest != rest.lower() and not raw.isupper():
        return True
    if shouting:
        return False
    if raw.isupper() and len(raw) > 1:
        return True
    return raw[0].isupper() and not at_start


def _near(a: str, b: str) -> bool:
    """Within one edit (insertion, deletion, substitution, adjacent swap) of each other."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        return (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]) and a[
            diff[1]
        ] == b[diff[0]]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1 :]


def _typo_of(word: str, others: Iterable[str]) -> bool:
    if len(word) < 5:
        return False
    return any(len(o) >= 5 and o[0] == word[0] and _near(word, o) for o in others)


def _entity_present(key: str, facts: _Facts) -> bool:
    if key in facts.stems or (" " in key and key in facts.text):
        return True
    return key.isalpha() and _typo_of(key, facts.stems)


def _negated_pair(a: str, b: str) -> bool:
    """``b`` is ``a`` with a negating prefix or a -less suffix (or the other way round)."""
    for x, y in ((a, b), (b, a)):
        if y == x + "les" or any(y == p + x for p in _NEGATING_PREFIXES):
            return True
    return False


def _explained(x: tuple[str, str], y: tuple[str, str]) -> bool:
    """Two different content words (stem, word) that keep the meaning: synonym, typo, form."""
    (a, word_a), (b, word_b) = x, y
    if b in _SYNONYMS.get(a, ()):
        return True
    if len(word_a) >= 5 and len(word_b) >= 5 and _near(word_a, word_b):
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and len(long_) - len(short) <= 3 and long_.startswith(short)


def _swap(a: list[str], b: list[str]) -> tuple[str, str] | None:
    """The two spans exchanged when ``b`` is ``a`` with X M Y turned into Y M X (M not empty:
    "X, Y" / "Y X" is a moved clause) and X and Y short (a longer span is a clause moved);
    none when M is a symmetric conjunction ("tea or coffee")."""
    if len(a) != len(b) or a == b:
        return None
    i = 0
    while a[i] == b[i]:
        i += 1
    j = len(a) - 1
    while a[j] == b[j]:
        j -= 1
    ma, mb = a[i : j + 1], b[i : j + 1]
    n = len(ma)
    for k in range(1, min(n, _MAX_SWAPPED + 1)):
        if mb[n - k :] != ma[:k]:
            continue
        for m in range(1, min(n - k, _MAX_SWAPPED + 1)):  # a non-empty middle
            middle = ma[k : n - m]
            if ma[n - m :] == mb[:m] and middle == mb[m : n - k] and ma[:k] != mb[:m]:
                if not _SYMMETRIC.isdisjoint(middle) and _ARTICLES_AND_SYMMETRIC.issuperset(middle):
                    return None
                return " ".join(ma[:k]), " ".join(mb[:m])
    return None


def _reordered_names(a: _Facts, b: _Facts) -> tuple[str, str] | None:
    """Two names both texts share, in the opposite order, around a directional word (to,
    from, than, ...): "PDF to Word" / "a Word file to PDF"."""
    if not (a.directional and b.directional):
        return None
    order = {key: i for i, key in enumerate(b.entities)}
    shared = [key for key in a.entities if key in order]
    for first, second in itertools.pairwise(shared):
        if order[first] > order[second]:
            return a.entities[first], a.entities[second]
    return None


def _show(items: object) -> str:
    if isinstance(items, Counter):
        items = sorted(items.elements())
    if isinstance(items, set | frozenset | list):
        return ", ".join(sorted(str(i) for i in items)) or "-"
    return str(items)


def mismatch(new: str, cached: str) -> str | None:
    """None when the answer cached for ``cached`` may answer ``new``, else a short reason.

    Both texts are prompt texts (``"role: content"`` lines); the check is symmetric.
    """
    a, b = _analyse(new), _analyse(cached)
    if a.roles != b.roles:
        return f"conversation differs: {'/'.join(a.roles)} vs {'/'.join(b.roles)}"
    if a.code != b.code:
        return "code blocks differ"
    if a.numbers != b.numbers:
        return f"numbers differ: {_show(a.numbers - b.numbers)} vs {_show(b.numbers - a.numbers)}"
    if a.negations != b.negations:
        return f"negation differs: {a.negations} vs {b.negations} negations"
    only_b: dict[str, str] = {}
    for stem in b.stems.keys() - a.stems.keys():
        only_b[stem] = only_b[_degree_base(stem)] = b.stems[stem]
    for stem in a.stems.keys() - b.stems.keys():
        opposites = _OPPOSITES.get(stem, set()) | _OPPOSITES.get(_degree_base(stem), set())
        opposite = {only_b[o] for o in opposites if o in only_b}
        if opposite:
            return f"opposite words: {a.stems[stem]} vs {_show(opposite)}"
    for cls in a.classes.keys() & b.classes.keys():
        x, y = a.classes[cls] - b.classes[cls], b.classes[cls] - a.classes[cls]
        if x and y:
            return f"{cls} differs: {_show(x)} vs {_show(y)}"
    lost_a = [raw for key, raw in a.entities.items() if not _entity_present(key, b)]
    lost_b = [raw for key, raw in b.entities.items() if not _entity_present(key, a)]
    if lost_a or lost_b:
        return f"names differ: {_show(lost_a)} vs {_show(lost_b)}"
    wh_a, wh_b = a.wh & _SPECIFIC_WH, b.wh & _SPECIFIC_WH
    if (wh_a or wh_b) and wh_a != wh_b and ((wh_a and wh_b) or not (a.wh and b.wh)):
        return f"question differs: {_show(a.wh)} vs {_show(b.wh)}"
    swapped = _swap(a.tokens, b.tokens) or _reordered_names(a, b)
    if swapped:
        return f"order differs: {swapped[0]} and {swapped[1]} swapped"
    only_a = {s: w for s, w in a.content.items() if s not in b.content}
    only_b = {s: w for s, w in b.content.items() if s not in a.content}
    return (
        _changed_word(only_a, only_b)
        or _added_qualifier(a, b, only_a, only_b)
        or _added_qualifier(b, a, only_b, only_a)
    )


_MAX_QUALIFIERS = 2  # more added words: a rewording, the embedding judges it
# Words that reword a question rather than narrow it ("the word X", "makes the sky appear
# blue", "how X works"): never taken for an added qualifier.
_LIGHT = frozenset(
    _stem(w)
    for w in _words(
        "word term phrase meaning mean means appear appears seem seems look looks work works"
        " happen happens exist exists thing things stuff actually basically exactly generally"
        " usually typically possible best good"
    )
)


def _added_qualifier(
    longer: _Facts, shorter: _Facts, extra: dict[str, str], missing: dict[str, str]
) -> str | None:
    """``longer`` is ``shorter`` with one or two content words added, each next to a content
    word both share ("gift" / "gift card"): a qualifier that narrows a noun phrase."""
    if not extra or len(extra) > _MAX_QUALIFIERS:
        return None
    pairs = [(x, y) for x in extra.items() for y in missing.items()]
    explained = {x[0] for x, y in pairs if _explained(x, y)}
    if len(explained) != len(missing) and missing:
        return None  # a word of the shorter one is gone too: a rewording, not an addition
    # An adverb ("simply", "quickly") qualifies how to answer, not what about.
    added = {
        s for s in extra if s not in explained and s not in _LIGHT and not extra[s].endswith("ly")
    }
    if not added:
        return None
    shared = longer.content.keys() & shorter.content.keys()
    stems = [_word(token)[1] for token in longer.tokens]
    for i, stem in enumerate(stems):
        if stem not in added:
            continue
        # Before the word it qualifies ("short poem"), else after it ("gift card").
        for j, phrase in ((i + 1, (i, i + 2)), (i - 1, (i - 1, i + 1))):
            if 0 <= j < len(stems) and stems[j] in shared:
                words = " ".join(longer.tokens[phrase[0] : phrase[1]])
                return f"qualifier added: {words} vs {shorter.content[stems[j]]}"
    return None


def _changed_word(only_a: dict[str, str], only_b: dict[str, str]) -> str | None:
    """A single content word replaced by one that is no synonym, typo or form of it."""
    for x in only_a:
        for y in only_b:
            if _negated_pair(x, y):
                return f"negation differs: {only_a[x]} vs {only_b[y]}"
    pairs = [(x, y) for x in only_a.items() for y in only_b.items()]
    explained = [(x, y) for x, y in pairs if _explained(x, y)]
    rest_a = set(only_a.values()) - {x[1] for x, _ in explained}
    rest_b = set(only_b.values()) - {y[1] for _, y in explained}
    if len(rest_a) == 1 and len(rest_b) == 1:
        return f"word changed: {_show(rest_a)} vs {_show(rest_b)}"
    return None
