"""Comic-like English text for the synthetic corpus: balloons, captions and sound effects.

The sample corpus needs text that looks like what the users' DataSpecs carry (short shouted
dialogue in capitals, narration captions and scene descriptions, onomatopoeia), so that the text
encoder, the tokenizer and the keyword search see the same kind of strings as in production.
Everything is built from the small word lists below with a `random.Random` the caller owns, so
the same seed gives the same words. Only ASCII is produced, because the font that letters the
pages (Pillow's bundled default) has no glyphs for accented letters.
"""

from __future__ import annotations

import random

NAMES = (
    "Maya",
    "Rusty",
    "Doc",
    "Vega",
    "Kane",
    "Odette",
    "Brix",
    "Luna",
    "Marlow",
    "Tess",
    "Captain Orso",
    "Agent Pike",
    "The Warden",
    "Professor Hale",
    "Sergeant Dunn",
    "Nova",
)
NOUNS = (
    "ship",
    "map",
    "key",
    "signal",
    "bomb",
    "engine",
    "door",
    "bridge",
    "tower",
    "storm",
    "code",
    "robot",
    "crown",
    "train",
    "radio",
    "machine",
    "city",
    "vault",
    "portal",
    "guards",
)
VERBS = ("find", "stop", "open", "fix", "catch", "save", "follow", "destroy", "hide", "warn")
ADJECTIVES = (
    "old",
    "broken",
    "secret",
    "burning",
    "frozen",
    "hidden",
    "last",
    "giant",
    "silent",
    "stolen",
)
PLACES = (
    "the docks",
    "the old lighthouse",
    "the rooftops",
    "the harbor",
    "the abandoned mine",
    "the space station",
    "the city below",
    "the desert outpost",
    "the museum",
    "the subway",
    "the forest edge",
    "the castle walls",
    "the control room",
    "the market square",
)
TIMES = (
    "Meanwhile",
    "Later that night",
    "At dawn",
    "Moments later",
    "Three days earlier",
    "Elsewhere",
    "Hours later",
    "That same evening",
    "Far away",
    "Back at the base",
)
SUBJECTS = (
    "A character",
    "A woman in a long coat",
    "A masked figure",
    "Two soldiers",
    "A small robot",
    "A man with a scar",
    "A girl holding a lantern",
    "The hero",
    "A crowd",
    "A giant creature",
    "An old scientist",
    "A pilot",
)
ACTIONS = (
    "stands in front of",
    "runs toward",
    "points at",
    "leaps over",
    "hides behind",
    "stares up at",
    "crashes through",
    "walks away from",
    "reaches for",
    "fights near",
)
OBJECTS = (
    "a towering robot-like structure",
    "a burning building",
    "a glowing doorway",
    "a wrecked car",
    "a huge moon",
    "a locked gate",
    "a crowd of onlookers",
    "a rocket",
    "a stormy sea",
    "a stone statue",
    "a row of computer screens",
    "a narrow alley",
)
SFX = (
    "BLAM",
    "KRAK",
    "WHOOSH",
    "BOOM",
    "THWACK",
    "ZZZT",
    "KA-BOOM",
    "CRASH",
    "SPLASH",
    "POW",
    "VRRRM",
    "TAK TAK TAK",
    "SNIKT",
    "FWOOSH",
    "CLANG",
    "BZZZ",
    "SKREEE",
    "THUD",
    "WHAM",
    "CLICK",
)

DIALOGUE_TEMPLATES = (
    "WE HAVE TO {verb} THE {noun}!",
    "{name}, LOOK OUT!",
    "WHERE IS THE {adj} {noun}?",
    "I TOLD YOU NOT TO TOUCH THE {noun}.",
    "NO ACTION.",
    "IT'S A TRAP!",
    "HOLD ON, {name}!",
    "THE {noun} IS {adj}... WE'RE TOO LATE.",
    "YOU'LL NEVER {verb} ME!",
    "{name} WOULD NEVER {verb} THE {noun}.",
    "GET TO THE {noun}, NOW!",
    "WHAT WAS THAT?",
    "I CAN'T {verb} IT ALONE.",
    "HA! THE {adj} {noun} IS MINE!",
    "{name}... IS THAT YOU?",
    "WE MEET AGAIN, {name}.",
    "RUN!",
    "THEY'RE TAKING THE {noun} TO {place}!",
    "HOW DO WE {verb} THE {adj} {noun}?",
    "TRUST ME. I'VE DONE THIS BEFORE.",
)
NARRATION_TEMPLATES = (
    "{time}, at {place}...",
    "{time}.",
    "{subject} {action} {object}.",
    "{subject} {action} {object} near {place}.",
    "The {adj} {noun} had waited a hundred years for this night.",
    "Nobody in {place} saw it coming.",
    "{time}, {subject_lower} {action} {object}.",
)


def _fill(template: str, rng: random.Random) -> str:
    """Fill one template's slots; each slot draws independently so repeats stay rare."""
    subject = rng.choice(SUBJECTS)
    return template.format(
        name=rng.choice(NAMES),
        noun=rng.choice(NOUNS),
        verb=rng.choice(VERBS),
        adj=rng.choice(ADJECTIVES),
        place=rng.choice(PLACES),
        time=rng.choice(TIMES),
        subject=subject,
        subject_lower=subject[0].lower() + subject[1:],
        action=rng.choice(ACTIONS),
        object=rng.choice(OBJECTS),
    )


def dialogue_line(rng: random.Random) -> str:
    """One speech balloon, in capitals as comics are lettered (UPPER.CASE dialogue is the norm)."""
    return _fill(rng.choice(DIALOGUE_TEMPLATES), rng).upper()


def narration_line(rng: random.Random) -> str:
    """One caption: a time/place caption or a scene description like a VLM writes."""
    line = _fill(rng.choice(NARRATION_TEMPLATES), rng)
    return line[0].upper() + line[1:]


def sfx_word(rng: random.Random) -> str:
    """One sound effect, sometimes with an exclamation mark as letterers draw them."""
    return rng.choice(SFX) + rng.choice(("", "!", "!!"))


def panel_text(rng: random.Random) -> dict[str, list[str]]:
    """The text of one panel under the three DataSpec keys; about one panel in five is silent."""
    if rng.random() < 0.2:
        return {"dialogue": [], "narration": [], "sfx": []}
    dialogue = [dialogue_line(rng) for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3)))]
    narration = [narration_line(rng)] if rng.random() < 0.3 else []
    sfx = [sfx_word(rng)] if rng.random() < 0.15 else []
    if not (dialogue or narration or sfx):
        dialogue = [dialogue_line(rng)]
    return {"dialogue": dialogue, "narration": narration, "sfx": sfx}


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` lines mixing dialogue, narration and sfx in the corpus's proportions.

    Meant for training a small byte-level BPE tokenizer that sees the same strings as the pages.
    """
    rng = random.Random(f"sentences:{seed}")
    makers = (dialogue_line,) * 6 + (narration_line,) * 3 + (sfx_word,)
    return [rng.choice(makers)(rng) for _ in range(n)]
