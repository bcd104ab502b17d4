"""app.cache.verify.mismatch: each signal that refuses a semantic hit, both directions, what
it lets through, the labelled bench pairs; and the mock upstream's bag-of-words vectors."""

from __future__ import annotations

import json
import math

import pytest

from app.cache.verify import mismatch
from app.mock.payloads import embedding_vector
from tests.support.paths import ROOT


def refused(a: str, b: str) -> str:
    """The reason, checked to be the same both ways round and given for both directions."""
    forward, backward = mismatch(f"user: {a}", f"user: {b}"), mismatch(f"user: {b}", f"user: {a}")
    assert forward is not None and backward is not None, (a, b, forward, backward)
    return forward


def accepted(a: str, b: str) -> None:
    assert mismatch(f"user: {a}", f"user: {b}") is None, (a, b)
    assert mismatch(f"user: {b}", f"user: {a}") is None, (b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How many eggs for 12 muffins?", "How many eggs for 24 muffins?"),
        ("Round 3.14159 to 2 decimals", "Round 3.14159 to 3 decimals"),
        ("Is a 20% tip normal?", "Is a 15% tip normal?"),
        ("Plan a trip for three days", "Plan a trip for four days"),
        ("Who finished fifth in the race?", "Who finished 4th in the race?"),
        ("Sum the numbers in column B", "Sum the 10 numbers in column B"),
    ],
)
def test_numbers_differ(a: str, b: str) -> None:
    assert refused(a, b).startswith("numbers differ")


def test_numbers_in_other_spellings_agree() -> None:
    accepted("Transfer $1,000 now", "transfer 1000 dollars now")
    accepted("What is 30 percent of 90?", "what is 30% of 90")
    accepted("Who came 3rd?", "Who came third?")
    accepted("A budget of 2.50 per day", "A budget of 2.5 per day")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Which cheeses are vegetarian?", "Which cheeses are not vegetarian?"),
        ("Why does the build pass on CI?", "Why doesn't the build pass on CI?"),
        ("Make a cake with eggs", "Make a cake without eggs"),
        ("Which students passed?", "Which students never passed?"),
        ("Is this contract clause enforceable?", "Is this contract clause unenforceable?"),
        ("Show orders with a discount", "Show orders with no discount"),
    ],
)
def test_negation_differs(a: str, b: str) -> None:
    assert refused(a, b).startswith("negation differs")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Sort the scores in ascending order", "Sort the scores in descending order"),
        ("How do I upload a file to S3?", "How do I download a file to S3?"),
        ("What is the highest mountain in Europe?", "What is the lowest mountain in Europe?"),
        ("Should I take this pill before meals?", "Should I take this pill after meals?"),
        ("How do I lock the screen?", "How do I unlock the screen?"),
        ("Is the stock a buy?", "Is the stock a sell?"),
        ("How do I log in to the VPN?", "How do I log out of the VPN?"),
    ],
)
def test_opposites_differ(a: str, b: str) -> None:
    reason = refused(a, b)
    assert reason.startswith(("opposite words", "negation differs")), reason


@pytest.mark.parametrize(
    ("a", "b", "what"),
    [
        ("Run 10 km a day", "Run 10 miles a day", "length"),
        ("Preheat to 200 C", "Preheat to 200 F", "temperature"),
        ("Is 2 kg of sugar enough?", "Is 2 lbs of sugar enough?", "mass"),
        ("Add 3 cups of milk", "Add 3 tablespoons of milk", "volume"),
        ("Backups every hour", "Backups every week", "time unit"),
        ("Is the bank open on Tuesday?", "Is the bank open on Thursday?", "weekday"),
        ("Weather in Oslo in november", "Weather in Oslo in october", "month"),
        ("Call me at 7 am", "Call me at 7 pm", "am/pm"),
        ("Translate it into french", "Translate it into spanish", "language"),
        ("Parse a date in python", "Parse a date in ruby", "programming language"),
    ],
)
def test_units_times_and_languages_differ(a: str, b: str, what: str) -> None:
    assert refused(a, b).startswith(what)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the capital of Slovakia?", "What is the capital of Slovenia?"),
        ("Install Redis on Debian", "Install Redis on Fedora"),
        ("What does HTTP 301 mean?", "What does FTP 301 mean?"),
        ("Explain pandas.merge", "Explain pandas.concat"),
        ("Reply to bob@example.com", "Reply to alice@example.com"),
        ("Summarise https://example.com/a", "Summarise https://example.com/b"),
        ("Translate 'good luck'", "Translate 'bad luck'"),
        ("What is a closure in Swift?", "What is a closure?"),
    ],
)
def test_names_differ(a: str, b: str) -> None:
    assert refused(a, b).startswith(("names differ", "opposite words"))


def test_names_match_across_case_and_a_typo() -> None:
    accepted("how do i install numpy", "How do I install NumPy?")
    accepted("Flights to Barcelona", "Flights to Barcelnoa")
    accepted("WHAT IS THE CAPITAL OF PERU", "What is the capital of Peru?")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Transfer money from savings to checking", "Transfer money from checking to savings"),
        ("Is Lisbon west of Madrid?", "Is Madrid west of Lisbon?"),
        ("Does the buyer pay the agent?", "Does the agent pay the buyer?"),
        ("Subtract 3 from 10", "Subtract 10 from 3"),
    ],
)
def test_swapped_roles_differ(a: str, b: str) -> None:
    assert refused(a, b).startswith("order differs")


def test_names_in_the_opposite_order_around_a_direction_differ() -> None:
    reason = refused("Export the table from Excel to CSV", "Export a CSV table into Excel")
    assert reason.startswith("order differs")


def test_a_moved_clause_or_a_symmetric_pair_is_no_swap() -> None:
    accepted("Is a tomato a fruit or a vegetable?", "Is a tomato a vegetable or a fruit?")
    accepted("Compare Python vs Java for web apps", "Compare Java vs Python for web apps")
    accepted("In Rust, how do I read a file?", "How do I read a file in Rust?")
    accepted("Before bed, what should I eat?", "What should I eat before bed?")
    accepted(
        "Which museums should I visit in Vienna during a long weekend?",
        "During a long weekend in Vienna, which museums should I visit?",
    )


def test_question_words_and_single_words() -> None:
    assert refused("Who wrote Hamlet?", "When was Hamlet written?").startswith("question")
    assert refused("How do I roast carrots?", "How do I roast potatoes?").startswith("word")
    assert refused("Why is my cat sneezing?", "Why is my dog sneezing?").startswith("word")


def test_rewordings_pass() -> None:
    accepted("Please tell me how to boil rice.", "How do I boil rice?")
    accepted("How do I fix a squeaky door?", "How do I repair a squeaky door?")
    accepted("Could you explain what a mutex is?", "What is a mutex?")
    accepted("what is the speed of sound", "What is the speed of sound?")
    accepted("How can I speed up my laptop?", "What can I do to make my laptop faster?")


@pytest.mark.parametrize(
    ("a", "b", "phrase"),
    [
        ("What should I buy my mom as a gift?", "What should I buy my mom as a gift card?",
         "gift card vs gift"),
        ("Write a poem about the sea", "Write a short poem about the sea", "short poem vs poem"),
        ("Find flights to Paris in May", "Find cheap flights to Paris in May",
         "cheap flights vs flights"),
        ("How do I sort a list in Python?", "How do I sort a linked list in Python?",
         "linked list vs list"),
        ("Best way to store coffee beans", "Best way to store ground coffee beans",
         "ground coffee vs coffee"),
        ("How much does a passport cost?", "How much does a passport renewal cost?",
         "renewal cost vs cost"),
        ("Recipe for chocolate cake", "Recipe for chocolate cake frosting",
         "cake frosting vs cake"),
    ],
)  # fmt: skip
def test_an_added_qualifier_differs(a: str, b: str, phrase: str) -> None:
    """One prompt narrows a noun phrase of the other by a word: another question."""
    assert refused(a, b) == f"qualifier added: {phrase}"


def test_what_is_no_added_qualifier_passes() -> None:
    # An adverb says how to answer, not what about.
    accepted("Explain recursion", "Explain recursion simply")
    accepted("How do I reverse a list in Python?", "How do I quickly reverse a list in Python?")
    # Words that reword the question rather than narrow it.
    accepted("What does ubiquitous mean?", "What is the meaning of the word ubiquitous?")
    accepted("What is compound interest?", "Can you explain how compound interest works?")
    accepted("Why is the sky blue?", "What makes the sky appear blue?")
    # Polite wrappers and stopwords add no content word.
    accepted("Tips for a job interview", "Could you please give me some tips for a job interview?")
    # Three added words or more: a rewording that the similarity judges, not the verifier.
    accepted("Find flights to Paris", "Find cheap direct morning flights to Paris")


def test_conversation_shape() -> None:
    one = "system: be brief\nuser: hi"
    assert mismatch(one, "user: hi") is not None
    assert mismatch("user: hi\nassistant: hello\nuser: bye", "user: hi\nuser: bye") is not None
    assert mismatch(one, "system: be brief\nuser: Hi!") is None


def test_code_blocks_must_match() -> None:
    prompt = "user: Why does this fail?\n```python\ndef f(x):\n    return x+1\n```"
    assert mismatch(prompt, prompt.replace("x+1", "x-1")) == "code blocks differ"
    assert mismatch(prompt, prompt.replace("    return", "  return")) is None


def test_bench_pairs() -> None:
    """Never a number, negation or antonym negative accepted; >= 90 % of positives pass."""
    lines = (ROOT / "bench" / "cache_pairs.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    verdicts = [(p, mismatch(f"user: {p['b']}", f"user: {p['a']}")) for p in pairs]
    hard = [p for p, why in verdicts if not p["same"] and why is None]
    assert not [p for p in hard if p["kind"] in ("number", "negation", "antonym")]
    positives = [why for p, why in verdicts if p["same"]]
    assert sum(why is None for why in positives) >= 0.9 * len(positives)


def cosine(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y, strict=True))


def test_embedding_vector_is_a_deterministic_bag_of_words() -> None:
    text = "How do I bake sourdough bread at home?"
    vector = embedding_vector(text, 256)
    assert vector == embedding_vector(text, 256)
    assert abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-6
    paraphrase = embedding_vector("How do I bake sourdough bread at home quickly?", 256)
    unrelated = embedding_vector("What is the exchange rate of the yen?", 256)
    assert cosine(vector, paraphrase) > 0.85 > cosine(vector, unrelated)
    assert cosine(vector, embedding_vector("how do i bake Sourdough breads at home", 256)) > 0.99
    assert embedding_vector("", 8) != embedding_vector("!", 8)
    assert abs(sum(x * x for x in embedding_vector("", 8)) - 1.0) < 1e-5
