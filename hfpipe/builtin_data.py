"""Datasets hfpipe generates itself (``data.builtin``): deterministic, offline, with a real signal.

Pure Python (no numpy / datasets import), so validating a recipe that names one stays instant.
A generator returns ``{split: [row, ...]}``; every split has its own random stream, so the held-out
splits are new sentences rather than copies of training ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# --- sentiment: movie-review sentences, label negative / positive --------------------------------------
# The label is carried by the adjectives, but flipped by negation ("not dull") and decided by the
# second clause of a contrast ("the plot was dull, but the cast was superb"), so a bag of words is not
# enough: the model has to read word order.

_POSITIVE = (
    "wonderful delightful brilliant charming superb gripping moving hilarious elegant heartfelt masterful "
    "stunning fresh clever touching memorable beautiful excellent engaging inventive thrilling witty warm "
    "powerful graceful riveting dazzling smart uplifting sincere"
).split()
_NEGATIVE = (
    "dull tedious clumsy boring bland predictable lifeless confusing awful shallow messy forgettable "
    "painful stale sloppy tiresome flat pointless dreadful weak lazy muddled cheap hollow "
    "irritating bloated incoherent grating joyless"
).split()
_SUBJECTS = (
    "the film|this movie|the plot|the acting|the script|the soundtrack|the ending|the cast|the dialogue|"
    "the cinematography|the pacing|the story|the lead performance|the direction|the final act|the humor|"
    "the score|the editing|the premise|the sequel|the documentary|the screenplay|the costumes|the villain"
).split("|")
_NOUNS = "film movie story experience picture comedy drama thriller debut sequel documentary".split()
_INTENSIFIERS = (
    "",
    "",
    "very ",
    "truly ",
    "remarkably ",
    "rather ",
    "quite ",
    "surprisingly ",
    "utterly ",
    "somewhat ",
    "deeply ",
    "really ",
)
_OPENERS = (
    "",
    "",
    "",
    "honestly, ",
    "overall, ",
    "to be fair, ",
    "in the end, ",
    "frankly, ",
    "i think ",
    "my friends agreed that ",
    "as expected, ",
)
_VERBS = ("was", "is", "felt", "seemed", "turned out to be")
# After "not", only intensifiers that keep the flip unambiguous ("not surprisingly bland" is not one).
_NOT_INTENSIFIERS = ("", "", "very ", "really ", "particularly ", "that ", "exactly ")


def _adjective(rng: random.Random, positive: bool) -> str:
    return rng.choice(_POSITIVE if positive else _NEGATIVE)


def _sentiment_sentence(rng: random.Random) -> tuple[str, int, str]:
    """(sentence, label, aspect): the aspect is what the deciding clause is about."""
    label = rng.random() < 0.5  # True = positive
    form = rng.random()
    subj, verb = rng.choice(_SUBJECTS), rng.choice(_VERBS)
    opener, very = rng.choice(_OPENERS), rng.choice(_INTENSIFIERS)
    if form < 0.35:
        text, aspect = f"{opener}{subj} {verb} {very}{_adjective(rng, label)}.", subj
    elif form < 0.5:
        adjective = _adjective(rng, label)  # drawn before the noun (the data must not change)
        noun = rng.choice(_NOUNS)
        text, aspect = f"what a {very}{adjective} {noun}!", f"the {noun}"
    elif form < 0.7:  # negation flips the adjective's polarity
        text, aspect = (
            f"{opener}{subj} {verb} not {rng.choice(_NOT_INTENSIFIERS)}{_adjective(rng, not label)}.",
            subj,
        )
    elif form < 0.85:  # contrast: the clause after "but" decides
        other = aspect = rng.choice([s for s in _SUBJECTS if s != subj])
        text = (
            f"{subj} {verb} {_adjective(rng, not label)}, but {other} {rng.choice(_VERBS)} "
            f"{very}{_adjective(rng, label)}."
        )
    else:  # concession: the main clause decides
        other = aspect = rng.choice([s for s in _SUBJECTS if s != subj])
        text = (
            f"although {subj} {verb} {_adjective(rng, not label)}, {other} {rng.choice(_VERBS)} "
            f"{very}{_adjective(rng, label)}."
        )
    return text[0].upper() + text[1:], int(label), aspect


_LABEL_NOISE = 0.03  # like annotator disagreement: ~97% is the best a model can score


def sentiment(train_size: int, validation_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
    """Movie-review sentences: columns text, label (negative / positive; 3% label noise) and aspect.

    aspect names what the deciding clause is about ("the cast" in "the plot was dull, but the cast was
    superb"): with the label it makes a small generation task ("positive (the cast)").
    """
    names = ("negative", "positive")

    def row(rng: random.Random) -> dict:
        text, label, aspect = _sentiment_sentence(rng)
        if rng.random() < _LABEL_NOISE:
            label = 1 - label
        return {"text": text, "label": names[label], "aspect": aspect}

    return _splits("sentiment", (train_size, validation_size, test_size), seed, row)


def _splits(name: str, sizes: tuple[int, int, int], seed: int, row) -> dict[str, list[dict]]:
    """{split: rows} with one random stream per split, so held-out splits are new rows, not copies."""
    out: dict[str, list[dict]] = {}
    for offset, (split, size) in enumerate(zip(("train", "validation", "test"), sizes, strict=True)):
        if size:
            rng = random.Random(f"{name}/{seed}/{offset}")
            out[split] = [row(rng) for _ in range(size)]
    return out


GENERATORS: dict[str, Callable[..., dict[str, list[dict]]]] = {"sentiment": sentiment}


# --- translation: English -> "Zeta", an invented language with its own word order --------------------
# Zeta puts the verb last (subject object verb), adjectives after their noun, a fronted adverb, marks
# the plural on the article and the noun, and the tense on the verb. Every word has one translation, so
# a small model can reach a high BLEU, but only by learning the reordering, not word by word.

_EN_NOUNS = (
    "cat dog bird horse farmer child teacher doctor king queen baker sailor fox wolf bear "
    "student painter singer soldier merchant"
).split()
_EN_ADJECTIVES = "old young small big red green happy tired clever quiet brave lazy".split()
# (base, third person singular, past)
_EN_VERBS = [
    ("see", "sees", "saw"),
    ("help", "helps", "helped"),
    ("follow", "follows", "followed"),
    ("call", "calls", "called"),
    ("find", "finds", "found"),
    ("watch", "watches", "watched"),
    ("meet", "meets", "met"),
    ("greet", "greets", "greeted"),
    ("chase", "chases", "chased"),
    ("teach", "teaches", "taught"),
]
_EN_ADVERBS = "today yesterday often quickly slowly never".split()


def _zeta_lexicon() -> dict[str, str]:
    """One invented word per English word, fixed for all time (a seeded RNG over syllables)."""
    rng = random.Random("zeta-lexicon")
    onsets, vowels, codas = (
        "b d f g k l m n p r s t v z".split(),
        "a e i o u".split(),
        ["", "", "n", "r", "l"],
    )
    words: dict[str, str] = {}
    used: set[str] = set()
    for english in [*_EN_NOUNS, *_EN_ADJECTIVES, *(v[0] for v in _EN_VERBS), *_EN_ADVERBS]:
        while True:
            word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.choice((2, 2, 3))))
            word += rng.choice(codas)
            if word not in used:
                break
        used.add(word)
        words[english] = word
    return words


_ZETA = _zeta_lexicon()


# Southern Zeta, a dialect for adapter demos: same words, other grammar. Plural -u (not -i), tense -ke / -so
# (not -ta / -mo), and the adverb at the end of the sentence instead of the front.
_STANDARD = {"plural": "i", "past": "-ta", "present": "-mo", "adverb_last": False}
_SOUTHERN = {"plural": "u", "past": "-ke", "present": "-so", "adverb_last": True}


def _translation_pair(rng: random.Random, grammar: dict = _STANDARD) -> tuple[str, str]:
    plural_mark = grammar["plural"]

    def noun_phrase() -> tuple[str, str, bool]:
        noun, plural = rng.choice(_EN_NOUNS), rng.random() < 0.3
        adjectives = rng.sample(_EN_ADJECTIVES, rng.choice((0, 0, 1, 1, 2)))
        article = rng.choice(("the", "a")) if not plural else "the"
        en = " ".join([article if not plural else "the", *adjectives, noun + ("s" if plural else "")])
        zt_article = {"the": "lo", "a": "na"}[article] + (plural_mark if plural else "")
        zt = " ".join(
            [zt_article, _ZETA[noun] + (plural_mark if plural else ""), *(_ZETA[a] for a in adjectives)]
        )
        return en, zt, plural

    subject_en, subject_zt, plural = noun_phrase()
    object_en, object_zt, _ = noun_phrase()
    base, third, past = rng.choice(_EN_VERBS)
    tense = rng.choice(("present", "past"))
    verb_en = past if tense == "past" else (base if plural else third)
    verb_zt = _ZETA[base] + grammar[tense]
    adverb = rng.choice(_EN_ADVERBS) if rng.random() < 0.4 else None
    english = f"{subject_en} {verb_en} {object_en}" + (f" {adverb}" if adverb else "")
    zeta = f"{subject_zt} {object_zt} {verb_zt}"
    if adverb:
        zeta = f"{zeta} {_ZETA[adverb]}" if grammar["adverb_last"] else f"{_ZETA[adverb]} {zeta}"
    return english[0].upper() + english[1:] + ".", zeta[0].upper() + zeta[1:] + "."


def translation(train_size: int, validation_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
    """English -> Zeta sentence pairs: columns en, zt. Held-out splits are new sentences (own streams)."""

    def row(rng: random.Random) -> dict:
        return dict(zip(("en", "zt"), _translation_pair(rng), strict=True))

    return _splits("translation", (train_size, validation_size, test_size), seed, row)


GENERATORS["translation"] = translation


def translation_southern(
    train_size: int, validation_size: int, test_size: int, seed: int
) -> dict[str, list[dict]]:
    """English -> Southern Zeta (columns en, zt): Zeta's words with another plural, tense and adverb order;
    the target of a translation adapter on a model trained on `translation`."""

    def row(rng: random.Random) -> dict:
        return dict(zip(("en", "zt"), _translation_pair(rng, _SOUTHERN), strict=True))

    return _splits("translation_southern", (train_size, validation_size, test_size), seed, row)


GENERATORS["translation_southern"] = translation_southern


# --- extractive question answering: short biographies of invented people ------------------------------
# A context introduces several people, each with one or two facts (each kind of fact for one person at
# most), in shuffled order between filler sentences; questions ask for one fact of one person, and the
# answer is a span of the context. Some contexts are longer than one 128-token window. In qa_v2 a third
# of the questions ask for a fact nobody stated or about a person who is not there (no answer).

_FIRST = (
    "Ada Bram Cleo Dario Edda Falk Greta Hugo Ines Jonas Kira Lars Mara Nils Olga Pavel Rosa Sven Tilda "
    "Ugo Vera Wim Xenia Yann Zora Amos Bela Cora Dina Emil"
).split()
_LAST = (
    "Almeda Brightwater Corvin Dunmore Eskola Farrow Galloway Holm Ivers Jansky Kettering Lindqvist "
    "Morrow Nyberg Oakes Pellam Quist Rowan Sorensen Thorne"
).split()
_CITIES = (
    "Talvik Brenna Ostrava Quillon Marrowby Sellis Dunhaven Korvale Pinecrest Ardmoor Velmar Halden "
    "Rostow Emberly Caldris Norwick"
).split()
_JOBS = "baker sailor teacher doctor painter carpenter librarian farmer pilot tailor potter chemist".split()
_ANIMALS = "cat dog parrot horse goat rabbit".split()
_PETS = "Pip Mosby Juniper Biscuit Tobble Nox Fennel Otto Pebble Rusk Saffi Wren".split()
_FOODS = (
    "plum cake|lentil soup|smoked fish|honey bread|apple pie|rice pudding|pickled beets|onion tart".split("|")
)
_FILLER = [
    "The winters in that region were long and dark.",
    "Many families moved there after the railway opened.",
    "The old market square was rebuilt twice.",
    "Letters from that time are kept in the town archive.",
    "Few of the houses from those years still stand.",
    "The river froze almost every January.",
    "A small newspaper reported on local events every week.",
    "The harbour was busy from spring until late autumn.",
]

# (fact key, sentence template, question templates); {a} marks the answer
_FACTS = {
    "birthplace": ("{n} was born in {a}.", ["Where was {n} born?", "In which town was {n} born?"]),
    "year": (
        "{n} arrived in the city in {a}.",
        ["When did {n} arrive in the city?", "In what year did {n} arrive?"],
    ),
    "job": ("{n} worked as a {a} for many years.", ["What did {n} work as?", "What was the job of {n}?"]),
    "pet": (
        "{n} had a {animal} called {a}.",
        ["What was the name of the {animal} of {n}?", "What was {n}'s {animal} called?"],
    ),
    "food": (
        "The favourite dish of {n} was {a}.",
        ["What was the favourite dish of {n}?", "Which dish did {n} like best?"],
    ),
}


def _qa_example(rng: random.Random, unanswerable: float) -> dict:
    # 2-4 people; within a context no two share a first or a last name
    firsts, lasts = rng.sample(_FIRST, 4), rng.sample(_LAST, 4)
    people = [{"name": f"{f} {last}"} for f, last in zip(firsts, lasts, strict=True)][: rng.randint(2, 4)]
    sentences = []  # (text, person index, fact, answer)
    unused = sorted(_FACTS)
    rng.shuffle(unused)
    for index, person in enumerate(people):
        # each kind of fact is stated for one person at most: the question's kind picks the sentence
        facts, unused = unused[: rng.randint(1, 2)], unused[rng.randint(1, 2) :]
        for fact in facts:
            animal = rng.choice(_ANIMALS)
            answer = {
                "birthplace": lambda: rng.choice(_CITIES),
                "year": lambda: str(rng.randint(1820, 1960)),
                "job": lambda: rng.choice(_JOBS),
                "pet": lambda: rng.choice(_PETS),
                "food": lambda: rng.choice(_FOODS),
            }[fact]()
            person[fact] = (answer, animal)
            sentences.append((_FACTS[fact][0], index, fact, answer, animal))
    sentences += [(text, None, None, None, None) for text in rng.sample(_FILLER, rng.randint(0, 8))]
    rng.shuffle(sentences)
    # Build the context, remembering where each answer starts.
    context, starts = "", {}
    for template, index, fact, answer, animal in sentences:
        if context:
            context += " "
        if index is None:
            context += template
            continue
        name = people[index]["name"]
        before, after = template.split("{a}")
        before = before.format(n=name, animal=animal)
        starts[(index, fact)] = len(context) + len(before)
        context += before + answer + after.format(n=name, animal=animal)
    if rng.random() < unanswerable:  # a fact nobody stated, or a person who is not there
        index = rng.randrange(len(people))
        missing = [f for f in sorted(_FACTS) if f not in people[index]]
        if missing:
            fact, name = rng.choice(missing), people[index]["name"]
        else:
            fact = rng.choice(sorted(_FACTS))
            name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
            while name in (p["name"] for p in people):
                name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        question = rng.choice(_FACTS[fact][1]).format(n=name, animal=rng.choice(_ANIMALS))
        return {"context": context, "question": question, "answers": {"text": [], "answer_start": []}}
    index, fact = rng.choice(sorted(starts))
    answer, animal = people[index][fact]
    question = rng.choice(_FACTS[fact][1]).format(n=people[index]["name"], animal=animal)
    return {
        "context": context,
        "question": question,
        "answers": {"text": [answer], "answer_start": [starts[(index, fact)]]},
    }


def _qa(name: str, unanswerable: float):
    def generate(train_size: int, validation_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
        counter = iter(range(10**9))

        def row(rng: random.Random) -> dict:
            return {"id": f"{name}-{next(counter)}", **_qa_example(rng, unanswerable)}

        return _splits(name, (train_size, validation_size, test_size), seed, row)

    share = f"; about {unanswerable:.0%} unanswerable (empty answers, SQuAD v2)" if unanswerable else ""
    generate.__doc__ = (
        "Questions on short invented biographies: columns id, context, question, answers (text, "
        f"answer_start: the Hugging Face SQuAD layout){share}."
    )
    return generate


GENERATORS["qa"] = _qa("qa", 0.0)
GENERATORS["qa_v2"] = _qa("qa_v2", 1 / 3)
