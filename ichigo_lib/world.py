"""The procedural "tiny world": what the ``tiny`` base LLM knows before it learns to listen.

Fictional countries, each with four attributes (capital, flag colour, national animal, number of
rivers), give ``4 × num_countries`` facts. From them the world derives question/answer pairs with
per-fact held-out phrasings, multiple-choice items asked with a held-out phrasing, multi-turn
dialogues that refer back with "it"/"its", chat conversations for training the base model, and
short sentences in the eight MLS languages for espeak-ng to speak.

Everything is a pure function of :class:`WorldConfig`: each part draws from its own
``random.Random`` seeded with a string (hashed with SHA-512, never with ``hash()``) and iterates
in a fixed order, so the same config saves byte-identical files in any process.

Chat answers to questions are the bare answer word plus a period (``"Parvel."``, ``"red."``,
``"3."``); multiple-choice options are the bare words (``"Parvel"``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from itertools import zip_longest
from pathlib import Path

from ichigo_lib.data.prompts import (
    REFUSAL_OPENINGS,
    REFUSAL_PROBLEMS,
    REFUSAL_REQUESTS,
    TRANSCRIPTION_PROMPTS,
)

LANGUAGES = ("en", "nl", "fr", "de", "it", "pl", "pt", "es")
ATTRIBUTES = ("capital", "flag", "animal", "rivers")
MAX_COUNTRIES = 1000
LONG_DIALOGUE_FRACTION = 0.1
# Each trained question is asked once on its own and once in a quiz session of up to this many
# unrelated questions: the shape of a 5-shot multiple-choice prompt in chat form.
QUIZ_MAX_TURNS = 7

# English question phrasings, per attribute; {c} is the country.
QUESTIONS = {
    "capital": (
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "Name the capital of {c}.",
        "What city is the capital of {c}?",
        "Tell me the capital of {c}.",
        "What is {c}'s capital city?",
        "In which city is the government of {c}?",
        "Which city serves as the capital of {c}?",
    ),
    "flag": (
        "What colour is the flag of {c}?",
        "What is the colour of the flag of {c}?",
        "Name the colour of the flag of {c}.",
        "Which colour is the flag of {c}?",
        "Tell me the colour of the flag of {c}.",
        "What colour is {c}'s flag?",
        "The flag of {c} has which colour?",
        "In what colour is the flag of {c}?",
    ),
    "animal": (
        "What is the national animal of {c}?",
        "Which animal is the national animal of {c}?",
        "Name the national animal of {c}.",
        "What animal represents {c}?",
        "Tell me the national animal of {c}.",
        "What is {c}'s national animal?",
        "Which animal is the symbol of {c}?",
        "Which animal does {c} have as its national animal?",
    ),
    "rivers": (
        "How many rivers does {c} have?",
        "What is the number of rivers in {c}?",
        "Name the number of rivers in {c}.",
        "How many rivers are there in {c}?",
        "Tell me how many rivers {c} has.",
        "How many rivers flow through {c}?",
        "What is {c}'s number of rivers?",
        "How many rivers can be found in {c}?",
    ),
}
# Dialogue follow-ups: the country is only named in the first user turn.
FOLLOW_UPS = {
    "capital": (
        "And what is its capital?",
        "Which city is its capital?",
        "What about its capital?",
    ),
    "flag": (
        "And what colour is its flag?",
        "What colour is its flag?",
        "What about the colour of its flag?",
    ),
    "animal": (
        "And what is its national animal?",
        "Which animal is its national animal?",
        "What about its national animal?",
    ),
    "rivers": (
        "And how many rivers does it have?",
        "How many rivers does it have?",
        "What about its number of rivers?",
    ),
}
ABOUT_REQUESTS = ("Tell me about {c}.", "What do you know about {c}?", "Describe {c}.")

# Per-language sentence templates. {c} country, {a} the attribute in that language (animals carry
# their article), {rivers} the inflected noun for the number {a}; "city" and "wildlife" are
# everyday sentences about a capital ({city}) or an animal ({animal}). English statements double
# as the statements of the text conversations.
TEMPLATES = {
    "en": {
        "capital": ("The capital of {c} is {a}.", "{a} is the capital of {c}."),
        "flag": ("The flag of {c} is {a}.", "The colour of the flag of {c} is {a}."),
        "animal": (
            "The national animal of {c} is the {a}.",
            "{c} has the {a} as its national animal.",
        ),
        "rivers": ("{c} has {a} {rivers}.", "The number of rivers in {c} is {a}."),
        "city": (
            "My friend lives in {city}.",
            "Tomorrow we travel to {city}.",
            "The weather in {city} is nice today.",
        ),
        "wildlife": (
            "The {animal} sleeps in the garden.",
            "The {animal} drinks water by the river.",
        ),
    },
    "nl": {
        "capital": ("De hoofdstad van {c} is {a}.", "{a} is de hoofdstad van {c}."),
        "flag": ("De vlag van {c} is {a}.", "De kleur van de vlag van {c} is {a}."),
        "animal": ("Het nationale dier van {c} is {a}.", "{c} heeft {a} als nationaal dier."),
        "rivers": ("{c} heeft {a} {rivers}.", "Het land {c} telt {a} {rivers}."),
        "city": (
            "Mijn vriend woont in {city}.",
            "Morgen reizen we naar {city}.",
            "Het weer in {city} is vandaag mooi.",
        ),
        "wildlife": ("{animal} slaapt in de tuin.", "{animal} drinkt water bij de rivier."),
    },
    "fr": {
        "capital": ("La capitale de {c} est {a}.", "{a} est la capitale de {c}."),
        "flag": ("Le drapeau de {c} est {a}.", "{c} a un drapeau {a}."),
        "animal": ("L'animal national de {c} est {a}.", "{c} a pour animal national {a}."),
        "rivers": ("{c} a {a} {rivers}.", "Le pays {c} compte {a} {rivers}."),
        "city": (
            "Mon ami habite à {city}.",
            "Demain, nous allons à {city}.",
            "Il fait beau aujourd'hui à {city}.",
        ),
        "wildlife": ("{animal} dort dans le jardin.", "{animal} boit de l'eau près de la rivière."),
    },
    "de": {
        "capital": ("Die Hauptstadt von {c} ist {a}.", "{a} ist die Hauptstadt von {c}."),
        "flag": ("Die Flagge von {c} ist {a}.", "Die Nationalflagge von {c} ist {a}."),
        "animal": ("Das Nationaltier von {c} ist {a}.", "Als Nationaltier von {c} gilt {a}."),
        "rivers": ("{c} hat {a} {rivers}.", "Im Land {c} gibt es {a} {rivers}."),
        "city": (
            "Mein Freund wohnt in {city}.",
            "Morgen fahren wir nach {city}.",
            "Heute ist das Wetter in {city} schön.",
        ),
        "wildlife": ("{animal} schläft im Garten.", "{animal} trinkt Wasser am Fluss."),
    },
    "it": {
        "capital": ("La capitale di {c} è {a}.", "{a} è la capitale di {c}."),
        "flag": ("La bandiera di {c} è {a}.", "{c} ha una bandiera {a}."),
        "animal": ("L'animale nazionale di {c} è {a}.", "{c} ha {a} come animale nazionale."),
        "rivers": ("{c} ha {a} {rivers}.", "Il paese {c} conta {a} {rivers}."),
        "city": (
            "Il mio amico abita a {city}.",
            "Domani andiamo a {city}.",
            "Oggi a {city} fa bel tempo.",
        ),
        "wildlife": ("{animal} dorme in giardino.", "{animal} beve acqua vicino al fiume."),
    },
    "pl": {
        "capital": ("Stolicą kraju {c} jest {a}.", "{a} to stolica kraju {c}."),
        "flag": ("Flaga kraju {c} jest {a}.", "Flaga narodowa kraju {c} jest {a}."),
        "animal": (
            "Narodowe zwierzę kraju {c} to {a}.",
            "Zwierzęciem narodowym kraju {c} jest {a}.",
        ),
        "rivers": ("Kraj {c} ma {a} {rivers}.", "Liczba rzek w kraju {c} to {a}."),
        "city": (
            "Mój przyjaciel mieszka w mieście {city}.",
            "Jutro jedziemy do miasta {city}.",
            "Dzisiaj w mieście {city} jest ładna pogoda.",
        ),
        "wildlife": ("{animal} śpi w ogrodzie.", "{animal} pije wodę nad rzeką."),
    },
    "pt": {
        "capital": ("A capital de {c} é {a}.", "{a} é a capital de {c}."),
        "flag": ("A bandeira de {c} é {a}.", "{c} tem uma bandeira {a}."),
        "animal": ("O animal nacional de {c} é {a}.", "{c} tem {a} como animal nacional."),
        "rivers": ("{c} tem {a} {rivers}.", "O número de rios de {c} é {a}."),
        "city": (
            "Meu amigo mora em {city}.",
            "Amanhã vamos viajar para {city}.",
            "Hoje o tempo está bom em {city}.",
        ),
        "wildlife": ("{animal} dorme no jardim.", "{animal} bebe água perto do rio."),
    },
    "es": {
        "capital": ("La capital de {c} es {a}.", "{a} es la capital de {c}."),
        "flag": ("La bandera de {c} es {a}.", "{c} tiene una bandera {a}."),
        "animal": ("El animal nacional de {c} es {a}.", "El animal que representa a {c} es {a}."),
        "rivers": ("{c} tiene {a} {rivers}.", "El número de ríos de {c} es {a}."),
        "city": (
            "Mi amigo vive en {city}.",
            "Mañana viajamos a {city}.",
            "Hoy hace buen tiempo en {city}.",
        ),
        "wildlife": ("{animal} duerme en el jardín.", "{animal} bebe agua cerca del río."),
    },
}
# Flag colours as predicates of "flag" in each language (feminine where the flag is).
COLOURS = {
    "en": ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink", "grey"),
    "nl": ("rood", "blauw", "groen", "geel", "wit", "zwart", "oranje", "paars", "roze", "grijs"),
    "fr": ("rouge", "bleu", "vert", "jaune", "blanc", "noir", "orange", "violet", "rose", "gris"),
    "de": ("rot", "blau", "grün", "gelb", "weiß", "schwarz", "orange", "lila", "rosa", "grau"),
    "it": (
        "rossa", "blu", "verde", "gialla", "bianca", "nera", "arancione", "viola", "rosa", "grigia",
    ),
    "pl": (
        "czerwona", "niebieska", "zielona", "żółta", "biała",
        "czarna", "pomarańczowa", "fioletowa", "różowa", "szara",
    ),
    "pt": (
        "vermelha", "azul", "verde", "amarela", "branca",
        "preta", "laranja", "roxa", "rosa", "cinza",
    ),
    "es": (
        "roja", "azul", "verde", "amarilla", "blanca", "negra", "naranja", "morada", "rosa", "gris",
    ),
}  # fmt: skip
# National animals; outside English (and Polish, which has no articles) with the definite article.
ANIMALS = {
    "en": (
        "dog", "cat", "horse", "cow", "pig", "sheep", "goat", "lion", "tiger", "bear",
        "wolf", "fox", "rabbit", "eagle", "owl", "duck", "frog", "snake", "deer", "elephant",
    ),
    "nl": (
        "de hond", "de kat", "het paard", "de koe", "het varken", "het schaap", "de geit",
        "de leeuw", "de tijger", "de beer", "de wolf", "de vos", "het konijn", "de adelaar",
        "de uil", "de eend", "de kikker", "de slang", "het hert", "de olifant",
    ),
    "fr": (
        "le chien", "le chat", "le cheval", "la vache", "le cochon", "le mouton", "la chèvre",
        "le lion", "le tigre", "l'ours", "le loup", "le renard", "le lapin", "l'aigle",
        "le hibou", "le canard", "la grenouille", "le serpent", "le cerf", "l'éléphant",
    ),
    "de": (
        "der Hund", "die Katze", "das Pferd", "die Kuh", "das Schwein", "das Schaf", "die Ziege",
        "der Löwe", "der Tiger", "der Bär", "der Wolf", "der Fuchs", "das Kaninchen", "der Adler",
        "die Eule", "die Ente", "der Frosch", "die Schlange", "der Hirsch", "der Elefant",
    ),
    "it": (
        "il cane", "il gatto", "il cavallo", "la mucca", "il maiale", "la pecora", "la capra",
        "il leone", "la tigre", "l'orso", "il lupo", "la volpe", "il coniglio", "l'aquila",
        "il gufo", "l'anatra", "la rana", "il serpente", "il cervo", "l'elefante",
    ),
    "pl": (
        "pies", "kot", "koń", "krowa", "świnia", "owca", "koza", "lew", "tygrys", "niedźwiedź",
        "wilk", "lis", "królik", "orzeł", "sowa", "kaczka", "żaba", "wąż", "jeleń", "słoń",
    ),
    "pt": (
        "o cão", "o gato", "o cavalo", "a vaca", "o porco", "a ovelha", "a cabra", "o leão",
        "o tigre", "o urso", "o lobo", "a raposa", "o coelho", "a águia", "a coruja", "o pato",
        "a rã", "a cobra", "o veado", "o elefante",
    ),
    "es": (
        "el perro", "el gato", "el caballo", "la vaca", "el cerdo", "la oveja", "la cabra",
        "el león", "el tigre", "el oso", "el lobo", "el zorro", "el conejo", "el águila",
        "el búho", "el pato", "la rana", "la serpiente", "el ciervo", "el elefante",
    ),
}  # fmt: skip
# "river" after the numbers 1, 2–4 and 5–9 (only Polish tells the last two apart).
RIVER_WORDS = {
    "en": ("river", "rivers", "rivers"),
    "nl": ("rivier", "rivieren", "rivieren"),
    "fr": ("rivière", "rivières", "rivières"),
    "de": ("Fluss", "Flüsse", "Flüsse"),
    "it": ("fiume", "fiumi", "fiumi"),
    "pl": ("rzekę", "rzeki", "rzek"),
    "pt": ("rio", "rios", "rios"),
    "es": ("río", "ríos", "ríos"),
}

# Names: consonant-vowel syllables whose letters every espeak-ng voice reads alike.
_ONSETS = "bdfklmnprstvz"
_VOWELS = "aeiou"
_CODAS = ("", "", "l", "n", "r")
_COUNTRY_ENDINGS = ("a", "ia", "en", "or")
# Fragments of rude words in some of the eight languages, which no name may contain.
_RUDE = ("anal", "fik", "fuk", "kak", "merd", "nazi", "pedo", "pene", "pis", "puta", "puto", "zizi")


def words(text: str) -> list[str]:
    """Runs of word characters and single punctuation marks (the word tokenizer's units)."""
    return re.findall(r"\w+|[^\w\s]", text)


def _strings(obj) -> list[str]:
    """Every string inside nested dicts and tuples."""
    if isinstance(obj, str):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj
    return [s for v in values for s in _strings(v)]


# Lower-cased words of every template and word list: names must differ from all of them.
_RESERVED = frozenset(
    w.lower()
    for s in _strings(
        (QUESTIONS, FOLLOW_UPS, ABOUT_REQUESTS, TEMPLATES, COLOURS, ANIMALS, RIVER_WORDS)
    )
    for w in words(s)
)


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of the tiny world."""

    seed: int = 0
    num_countries: int = 240
    heldout_fraction: float = 0.25
    mc_fewshot: int = 40
    mc_test_items: int = 400
    num_dialogues: int = 600
    sentences_per_language: int = 400

    def __post_init__(self):
        if not 8 <= self.num_countries <= MAX_COUNTRIES:
            raise ValueError(
                f"num_countries must be in [8, {MAX_COUNTRIES}], got {self.num_countries}"
            )
        if not 0.0 <= self.heldout_fraction <= 0.9:
            raise ValueError(f"heldout_fraction must be in [0, 0.9], got {self.heldout_fraction}")
        for name in ("mc_fewshot", "mc_test_items", "num_dialogues", "sentences_per_language"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Country:
    """A fictional country; ``flag`` and ``animal`` are English words."""

    name: str
    capital: str
    flag: str
    animal: str
    rivers: int


@dataclass(frozen=True)
class Fact:
    """One attribute of one country; ``answer`` is a single word (rivers as a digit)."""

    country: str
    attribute: str
    answer: str


@dataclass(frozen=True)
class QA:
    """``fact`` asked with ``QUESTIONS[attribute][template]``; ``split`` is "train" or "heldout"."""

    question: str
    answer: str
    fact: Fact
    template: int
    split: str


@dataclass(frozen=True)
class MCItem:
    """A held-out question with four bare-word choices; ``split`` is "fewshot" or "test"."""

    question: str
    choices: tuple[str, str, str, str]
    label: int
    fact: Fact
    split: str


@dataclass(frozen=True)
class Sentence:
    """A sentence for speech synthesis; ``split`` is "train" or "heldout"."""

    lang: str
    text: str
    split: str


@dataclass(frozen=True)
class Dialogue:
    """Chat messages about one country, alternating user/assistant."""

    country: str
    messages: tuple[dict, ...]


def _rng(seed: int, part: str) -> random.Random:
    """An independent, process-stable random stream for one part of the world."""
    return random.Random(f"tiny-world/{seed}/{part}")


def _chat(*turns: str) -> list[dict]:
    """Alternating user/assistant messages, starting with the user."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def _reply(answer: str) -> str:
    """Short answers are the bare answer word, exactly the multiple-choice option's text."""
    return answer


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, lang: str, country: Country, attribute: str) -> str:
    """A sentence stating ``country``'s ``attribute`` in ``lang``."""
    value = {
        "capital": country.capital,
        "flag": COLOURS[lang][COLOURS["en"].index(country.flag)],
        "animal": ANIMALS[lang][ANIMALS["en"].index(country.animal)],
        "rivers": str(country.rivers),
    }[attribute]
    plural = RIVER_WORDS[lang][0 if country.rivers == 1 else 1 if country.rivers < 5 else 2]
    return _capitalised(template.format(c=country.name, a=value, rivers=plural))


def fact_sentence(country: Country, attribute: str, lang: str, template: int = 0) -> str:
    """A statement of one fact in ``lang`` (the same fact reads alike across languages)."""
    return _fill(TEMPLATES[lang][attribute][template], lang, country, attribute)


def _acceptable(name: str) -> bool:
    """No doubled letters, no "rz" (a single sound in Polish), nothing rude."""
    doubled = any(a == b for a, b in zip(name, name[1:], strict=False))
    return not doubled and "rz" not in name and not any(r in name for r in _RUDE)


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _country_name(rng: random.Random) -> str:
    """E.g. "Zorvia": a syllable, an onset and an ending (2-3 syllables)."""
    return _syllable(rng) + rng.choice(_ONSETS) + rng.choice(_COUNTRY_ENDINGS)


def _city_name(rng: random.Random) -> str:
    """E.g. "Parvel": 2-3 syllables."""
    return "".join(_syllable(rng) for _ in range(rng.randint(2, 3)))


def _unique_names(rng: random.Random, make, count: int, taken: set[str]) -> list[str]:
    """``count`` new capitalised names, none of them in (lower-cased) ``taken``; updates it."""
    names = []
    while len(names) < count:
        name = make(rng)
        if name not in taken and _acceptable(name):
            taken.add(name)
            names.append(name.capitalize())
    return names


def _make_countries(cfg: WorldConfig) -> tuple[Country, ...]:
    rng = _rng(cfg.seed, "countries")
    taken = set(_RESERVED)
    names = _unique_names(rng, _country_name, cfg.num_countries, taken)
    capitals = _unique_names(rng, _city_name, cfg.num_countries, taken)
    return tuple(
        Country(
            name, capital, rng.choice(COLOURS["en"]), rng.choice(ANIMALS["en"]), rng.randint(1, 9)
        )
        for name, capital in zip(names, capitals, strict=True)
    )


def _make_facts(countries: tuple[Country, ...]) -> tuple[Fact, ...]:
    return tuple(Fact(c.name, a, str(getattr(c, a))) for c in countries for a in ATTRIBUTES)


def _make_qa(cfg: WorldConfig, facts: tuple[Fact, ...]) -> tuple[QA, ...]:
    """Every fact under every phrasing; a per-fact random ~fraction of phrasings is held out."""
    rng = _rng(cfg.seed, "heldout")
    qa = []
    for fact in facts:
        templates = QUESTIONS[fact.attribute]
        k = min(round(len(templates) * cfg.heldout_fraction), len(templates) - 1)
        held = rng.sample(range(len(templates)), k)
        qa += [
            QA(
                q.format(c=fact.country),
                _reply(fact.answer),
                fact,
                t,
                "heldout" if t in held else "train",
            )
            for t, q in enumerate(templates)
        ]
    return tuple(qa)


def _make_mc(cfg: WorldConfig, countries, facts, qa) -> tuple[MCItem, ...]:
    """Items asked with a held-out phrasing, few-shot ones first; attributes take turns."""
    rng = _rng(cfg.seed, "mc")
    values = {
        "capital": [c.capital for c in countries],
        "flag": COLOURS["en"],
        "animal": ANIMALS["en"],
        "rivers": [str(n) for n in range(1, 10)],
    }
    phrasings = {}
    for q in qa:
        phrasings.setdefault(q.fact, []).append(q)
    by_attribute = {a: [] for a in ATTRIBUTES}
    for fact in facts:
        held = [q for q in phrasings[fact] if q.split == "heldout"] or phrasings[fact]
        others = [v for v in values[fact.attribute] if v != fact.answer]
        choices = [fact.answer, *rng.sample(others, 3)]
        rng.shuffle(choices)
        by_attribute[fact.attribute].append(
            (rng.choice(held).question, tuple(choices), choices.index(fact.answer), fact)
        )
    groups = [rng.sample(items, len(items)) for items in by_attribute.values()]
    order = [item for row in zip(*groups, strict=True) for item in row]
    fewshot = min(cfg.mc_fewshot, len(order))
    test = order[fewshot : fewshot + cfg.mc_test_items]
    return tuple(MCItem(*item, "fewshot") for item in order[:fewshot]) + tuple(
        MCItem(*item, "test") for item in test
    )


def _make_dialogues(cfg: WorldConfig, countries, qa) -> tuple[Dialogue, ...]:
    """Dialogues about one country: 2 user turns, or 4-6 for a tenth; follow-ups say "it"/"its"."""
    rng = _rng(cfg.seed, "dialogues")
    trained = {}
    for q in qa:
        if q.split == "train":
            trained.setdefault((q.fact.country, q.fact.attribute), []).append(q)
    n = cfg.num_dialogues
    long = set(rng.sample(range(n), round(n * LONG_DIALOGUE_FRACTION)))
    dialogues = []
    for i in range(n):
        country = rng.choice(countries)
        turns = rng.randint(4, 6) if i in long else 2
        attrs = rng.sample(ATTRIBUTES, min(turns, 4)) + rng.choices(ATTRIBUTES, k=max(0, turns - 4))
        first = rng.choice(trained[(country.name, attrs[0])])
        texts = [first.question, first.answer]
        for attr in attrs[1:]:
            texts += [rng.choice(FOLLOW_UPS[attr]), _reply(str(getattr(country, attr)))]
        dialogues.append(Dialogue(country.name, tuple(_chat(*texts))))
    return tuple(dialogues)


def _make_sentences(cfg: WorldConfig, countries) -> tuple[Sentence, ...]:
    """Per language, distinct sentences drawn evenly from the template groups, then split."""
    rng = _rng(cfg.seed, "sentences")
    sentences = []
    for lang in LANGUAGES:
        templates = TEMPLATES[lang]
        groups = [
            [_fill(t, lang, c, a) for t in templates[a] for c in countries] for a in ATTRIBUTES
        ]
        groups.append([t.format(city=c.capital) for t in templates["city"] for c in countries])
        groups.append(
            [_capitalised(t.format(animal=a)) for t in templates["wildlife"] for a in ANIMALS[lang]]
        )
        if lang == "en":  # the world's questions, spoken later as instructions
            groups.append(
                [q.format(c=c.name) for a in ATTRIBUTES for q in QUESTIONS[a] for c in countries]
            )
        for group in groups:
            rng.shuffle(group)
        interleaved = [s for row in zip_longest(*groups) for s in row if s is not None]
        chosen = list(dict.fromkeys(interleaved))[: cfg.sentences_per_language]
        rng.shuffle(chosen)
        heldout = round(len(chosen) * cfg.heldout_fraction)
        sentences += [
            Sentence(lang, text, "heldout" if i < heldout else "train")
            for i, text in enumerate(chosen)
        ]
    return tuple(sentences)


@dataclass(frozen=True)
class World:
    """The tiny world: its countries and every text derived from them."""

    config: WorldConfig
    countries: tuple[Country, ...]
    facts: tuple[Fact, ...]
    qa: tuple[QA, ...]
    mc: tuple[MCItem, ...]
    dialogues: tuple[Dialogue, ...]
    sentences: tuple[Sentence, ...]

    def text_conversations(self, split: str = "train") -> list[list[dict]]:
        """Chats for the base model: trained QA, "tell me about" requests and the dialogues
        (``"train"``, shuffled), or the held-out QA (``"heldout"``)."""
        if split == "heldout":
            return [_chat(q.question, q.answer) for q in self.qa if q.split == "heldout"]
        if split != "train":
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        rng = _rng(self.config.seed, "text")
        trained = [q for q in self.qa if q.split == "train"]
        chats = [_chat(q.question, q.answer) for q in trained]
        rng.shuffle(trained)
        while trained:  # and again in quiz sessions of 1-7 unrelated questions
            turns = rng.randint(1, QUIZ_MAX_TURNS)
            quiz, trained = trained[:turns], trained[turns:]
            chats.append(_chat(*(text for q in quiz for text in (q.question, q.answer))))
        for country in self.countries:  # one request states every fact, one a random 2-3
            for attrs in (rng.sample(ATTRIBUTES, 4), rng.sample(ATTRIBUTES, rng.randint(2, 3))):
                statements = [
                    _fill(rng.choice(TEMPLATES["en"][a]), "en", country, a) for a in attrs
                ]
                chats.append(
                    _chat(rng.choice(ABOUT_REQUESTS).format(c=country.name), " ".join(statements))
                )
        chats += [[dict(m) for m in d.messages] for d in self.dialogues]
        rng.shuffle(chats)
        return chats

    def vocabulary(self) -> list[str]:
        """Every word (under :func:`words`) of every text in the world, sorted."""
        texts = [str(v) for c in self.countries for v in asdict(c).values()]
        texts += [t for q in self.qa for t in (q.question, q.answer)]
        texts += [t for m in self.mc for t in (m.question, *m.choices)]
        texts += [s.text for s in self.sentences]
        texts += [m["content"] for chat in self.text_conversations() for m in chat]
        texts += list(TRANSCRIPTION_PROMPTS)  # the phase-2 transcription rows' instructions
        texts += [*REFUSAL_OPENINGS, *REFUSAL_PROBLEMS, *REFUSAL_REQUESTS]  # phase-3 refusals
        return sorted({w for t in texts for w in words(t)})

    def save(self, directory: str | Path) -> dict[str, str]:
        """Write the world as canonical JSON lines; returns ``{filename: sha256 hex}``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "config.json": [asdict(self.config)],
            "countries.jsonl": [asdict(c) for c in self.countries],
            "qa.jsonl": [asdict(q) for q in self.qa],
            "mc.jsonl": [asdict(m) for m in self.mc],
            "dialogues.jsonl": [asdict(d) for d in self.dialogues],
            "sentences.jsonl": [asdict(s) for s in self.sentences],
            "text_train.jsonl": [{"conversations": c} for c in self.text_conversations()],
        }
        digests = {}
        for name, rows in files.items():
            data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
            (directory / name).write_bytes(data.encode())
            digests[name] = hashlib.sha256(data.encode()).hexdigest()
        return digests

    @classmethod
    def load(cls, directory: str | Path) -> World:
        """Read a world written by :meth:`save`."""
        directory = Path(directory)

        def rows(name: str) -> list[dict]:
            return [json.loads(line) for line in (directory / name).read_text("utf-8").splitlines()]

        countries = tuple(Country(**r) for r in rows("countries.jsonl"))
        return cls(
            config=WorldConfig(**rows("config.json")[0]),
            countries=countries,
            facts=_make_facts(countries),
            qa=tuple(QA(**{**r, "fact": Fact(**r["fact"])}) for r in rows("qa.jsonl")),
            mc=tuple(
                MCItem(**{**r, "choices": tuple(r["choices"]), "fact": Fact(**r["fact"])})
                for r in rows("mc.jsonl")
            ),
            dialogues=tuple(
                Dialogue(r["country"], tuple(r["messages"])) for r in rows("dialogues.jsonl")
            ),
            sentences=tuple(Sentence(**r) for r in rows("sentences.jsonl")),
        )


def build_world(cfg: WorldConfig) -> World:
    """Build the world described by ``cfg`` (deterministic)."""
    countries = _make_countries(cfg)
    facts = _make_facts(countries)
    qa = _make_qa(cfg, facts)
    return World(
        config=cfg,
        countries=countries,
        facts=facts,
        qa=qa,
        mc=_make_mc(cfg, countries, facts, qa),
        dialogues=_make_dialogues(cfg, countries, qa),
        sentences=_make_sentences(cfg, countries),
    )
