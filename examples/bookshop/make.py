"""Writes the example dataset of this folder (deterministic; run from anywhere): a small bookshop.

- `interactions.csv`: reader_id, book_id, rating (1-5), read_on (ISO date), one row per book read;
- `books.csv`: book_id, title, author, genre, series, year.

Books come in series of a genre; each reader prefers a genre and mostly reads series in order, so the next book
is learnable, and the text columns (genre, series, author) carry what semantic IDs pick up. About one read in
eight is a book the reader did not like (rating 1-2) and picked at random: `data.min_rating=3` drops them.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

GENRES = {
    "fantasy": ["Dragon", "Crown", "Shadow", "Ember", "Rune"],
    "mystery": ["Harbour", "Lantern", "Cipher", "Fog", "Raven"],
    "science fiction": ["Orbit", "Quasar", "Signal", "Drift", "Nova"],
    "romance": ["Summer", "Letters", "Orchard", "Vow", "Tide"],
    "history": ["Empire", "Silk Road", "Republic", "Frontier", "Dynasty"],
    "cooking": ["Kitchen", "Bread", "Spice", "Garden", "Table"],
}
AUTHORS = ["A. Moreau", "B. Okafor", "C. Lindqvist", "D. Tanaka", "E. Rossi", "F. Novak", "G. Haddad", "H. Silva",
           "I. Kowalski", "J. Mensah", "K. Ivanova", "L. Chen"]
BOOKS_PER_SERIES = 5


def main(directory: Path = Path(__file__).parent, num_readers: int = 600, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    books = []  # (book_id, title, author, genre, series, year)
    for g, (genre, words) in enumerate(GENRES.items()):
        for s, word in enumerate(words):
            author = AUTHORS[(g * 5 + s) % len(AUTHORS)]
            for n in range(BOOKS_PER_SERIES):
                books.append((f"bk{len(books):04d}", f"The {word} {['Beginning', 'Return', 'Secret', 'War', 'End'][n]}",
                              author, genre, f"{word} series, book {n + 1}", 1990 + int(rng.integers(30))))
    by_genre = {genre: [i for i, b in enumerate(books) if b[3] == genre] for genre in GENRES}
    rows = []
    start = dt.date(2023, 1, 1)
    for r in range(num_readers):
        genre = list(GENRES)[int(rng.integers(len(GENRES)))]
        day = int(rng.integers(200))
        read: set[int] = set()
        book = int(rng.choice(by_genre[genre]))
        for _ in range(int(rng.integers(6, 16))):
            if rng.random() < 0.12:  # a random pick the reader did not like
                other = int(rng.integers(len(books)))
                if other not in read:
                    read.add(other)
                    rows.append((f"r{r:04d}", books[other][0], int(rng.integers(1, 3)), start + dt.timedelta(day)))
                    day += 1 + int(rng.integers(5))
                continue
            if book not in read:
                read.add(book)
                rows.append((f"r{r:04d}", books[book][0], int(rng.integers(3, 6)), start + dt.timedelta(day)))
                day += 1 + int(rng.integers(10))
            in_series = book % BOOKS_PER_SERIES
            if in_series < BOOKS_PER_SERIES - 1 and rng.random() < 0.85:
                book += 1  # the next book of the series
            else:
                if rng.random() < 0.2:
                    genre = list(GENRES)[int(rng.integers(len(GENRES)))]
                book = int(rng.choice([i for i in by_genre[genre] if i % BOOKS_PER_SERIES == 0] + by_genre[genre][:1]))
    with open(directory / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reader_id", "book_id", "rating", "read_on"])
        w.writerows((u, b, rating, day.isoformat()) for u, b, rating, day in rows)
    with open(directory / "books.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["book_id", "title", "author", "genre", "series", "year"])
        w.writerows(books)


if __name__ == "__main__":
    main()
