"""Small demo datasets the project writes itself, for the quickstart and tests.

A fresh machine has no shared data and maybe no hub: these are made here,
deterministically, from short hand-written phrases (no external text).
"""
from __future__ import annotations

import random

import pandas as pd

SUBJECTS = ["The film", "This movie", "The plot", "The acting", "The soundtrack", "The ending", "The director's "
            "latest work", "The script", "The cast", "This sequel", "The cinematography", "The story",
            "The lead performance", "The dialogue", "The pacing"]
POSITIVE = ["was wonderful", "is a delight from start to finish", "moved me to tears in the best way",
            "was sharp, funny and warm", "is beautifully made", "kept me gripped", "was a joy to watch",
            "is clever and heartfelt", "deserves every award", "left me smiling for days", "is stunning",
            "felt fresh and inventive", "was brilliantly acted", "is the best I have seen this year",
            "was touching and honest"]
NEGATIVE = ["was a waste of time", "is dull and far too long", "made no sense at all", "was painfully boring",
            "is a clumsy mess", "fell flat", "was badly acted", "is predictable and lazy",
            "left me cold", "was an ordeal to sit through", "is forgettable", "felt cheap and rushed",
            "was a total letdown", "is the worst I have seen this year", "was irritating and shallow"]
TAILS = ["", "", " Honestly.", " I would not have guessed it.", " Everyone in the room agreed.",
         " That says it all.", " Make of that what you will."]


def sentiment(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """`n` short movie reviews with labels 'negative' / 'positive', balanced."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        phrase = rng.choice(POSITIVE if positive else NEGATIVE)
        rows.append({"text": f"{rng.choice(SUBJECTS)} {phrase}.{rng.choice(TAILS)}",
                     "label": "positive" if positive else "negative"})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def sentiment_splits(n_train: int = 320, n_test: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) without a shared row."""
    frame = sentiment(4 * (n_train + n_test), seed).drop_duplicates("text").reset_index(drop=True)
    if len(frame) < n_train + n_test:
        raise ValueError(f"only {len(frame)} distinct demo reviews; ask for fewer")
    return frame.iloc[:n_train].reset_index(drop=True), frame.iloc[n_train:n_train + n_test].reset_index(drop=True)
