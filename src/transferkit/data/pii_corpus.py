"""A synthetic English PII corpus for named-entity recognition, with exact gold character spans.

Provenance: every sentence is synthetic. Sentences are written from
:data:`TEMPLATES` (60 hand-written sentence templates in six genres: e-mails,
support tickets, invoices, chat messages, HR notes and other notices such as
bookings, deliveries and bank messages; 11 of them hold no entity, many hold 2
to 4) whose slots are filled with values made up by the ``Faker`` library
(https://github.com/joke2k/faker, MIT licence; the version used is recorded in
each split's ``source``) or drawn by this module (dates, amounts, ticket numbers,
times). No value comes from a real record; names, companies, e-mail addresses
and phone numbers are random combinations of Faker's word lists, so any
resemblance to a real person or company is chance. The corpus is generated when
asked for; nothing is downloaded or shipped.

Entity types (the labels of the spans): ``PERSON`` (first and last name, no
title), ``ORG`` (company), ``CITY``, ``DATE`` (six formats: ``March 3, 2024``,
``3 March 2024``, ``2024-03-03``, ``03/03/2024``, ``Mar 3, 2024``,
``3rd of March 2024``), ``MONEY`` (currency sign or code included:
``$1,234.50``, ``EUR 80.00``, ``950.00 USD``), ``EMAIL`` and ``PHONE``. Job
titles, product names, ticket numbers, quantities and clock times fill other
slots and are *not* entities (tagged ``O``), so that not every number or
capitalised phrase is one.

Made for measuring generalisation, not memorisation:

* the templates are split once, by a fixed seeded shuffle within each genre, into
  43 training and 17 test templates (:func:`template_split`): no test sentence
  has the wording of a training one, and every entity type occurs in at least
  three test templates;
* test values come from other Faker locales than training values (training
  ``en_US``; test names and companies ``en_GB``/``en_IE``/``en_NZ``, cities and
  phone numbers ``en_GB``/``en_NZ``/``en_AU``/``en_CA``, e-mail addresses from all
  five), and test dates fall in 2023-2026 where training dates fall in 2015-2022;
* a test sentence holding any entity string that occurs in the training split
  (an exact match of the surface string, of any type) is dropped and another is
  drawn, so no test entity string is seen in training.

The output is deterministic for a ``seed`` and a Faker version: each Faker
generator is seeded with ``seed_instance`` and every other draw comes from a
``random.Random`` of its own. Each span starts and ends on a word boundary of
:func:`~transferkit.tasks.token_schemes.split_words` (the templates never glue a
value to a letter, digit, ``'s`` or ``/``), so
:func:`~transferkit.data.token_spans.spans_to_tags` turns every record into
words and IOB2 tags without loss; a record that broke this would raise.

Usage:
    python -m transferkit.data.pii_corpus --out pii.jsonl [--n-train 2000] [--n-test 500] [--seed 0]

writes one JSON object per line: ``{"text": ..., "spans": [[start, end, label], ...], "split": "train"}``.

Example:
    >>> train, test = build_pii(n_train=20, n_test=10)
    >>> len(train), len(test), train.label_names[:3]
    (20, 10, ['O', 'B-CITY', 'I-CITY'])
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from transferkit.data.dataset import TaskData
from transferkit.data.token_spans import spans_to_tags, token_data
from transferkit.errors import DataError
from transferkit.tasks.token_schemes import tag_order

ENTITY_TYPES = ("PERSON", "ORG", "CITY", "DATE", "MONEY", "EMAIL", "PHONE")
#: Seed of the fixed train/test split of the templates (independent of the ``seed`` of the values): the
#: smallest seed whose split gives every entity type at least three test and five training templates.
TEMPLATE_SEED = 1
TEST_FRACTION = 0.3
TRAIN_LOCALE = "en_US"
#: Faker locales of the test values, per slot kind.
TEST_LOCALES = {
    "PERSON": ("en_GB", "en_IE", "en_NZ"),
    "ORG": ("en_GB", "en_IE", "en_NZ"),
    "CITY": ("en_GB", "en_NZ", "en_AU", "en_CA"),
    "PHONE": ("en_GB", "en_NZ", "en_AU", "en_CA"),
    "EMAIL": ("en_GB", "en_IE", "en_NZ", "en_AU", "en_CA"),
    "JOB": ("en_GB", "en_IE", "en_NZ", "en_AU", "en_CA"),
}
#: Years of the dates of each split.
DATE_YEARS = {"train": (2015, 2022), "test": (2023, 2026)}

#: ``(genre, template)``; a slot is ``{TYPE}`` or ``{TYPE2}`` (a second value of the type). Entity slots are
#: :data:`ENTITY_TYPES`; ``NUM``, ``JOB``, ``PRODUCT`` and ``TIME`` fill words tagged ``O``.
TEMPLATES: tuple[tuple[str, str], ...] = (
    # e-mails
    ("email", "Hi {PERSON}, please send the signed contract to {EMAIL} before {DATE}."),
    ("email", "From: {PERSON} <{EMAIL}>"),
    ("email", "Dear {PERSON}, thank you for your order with {ORG}. Your receipt for {MONEY} is attached."),
    ("email", "Please reply to {EMAIL} or call me on {PHONE} if anything is unclear."),
    ("email", "Forwarding this from {PERSON}: the {CITY} office will close early on {DATE}."),
    ("email", "Subject: Meeting with {ORG} in {CITY} on {DATE}"),
    ("email", "Kind regards, {PERSON}, {JOB}, {ORG}"),
    ("email", "I have copied {PERSON} ({EMAIL}) so they can confirm the figures."),
    ("email", "Thanks for the quick reply! I will circulate the notes from the {PRODUCT} review tomorrow."),
    ("email", "Please find version {NUM} of the draft attached; let me know if the numbers look right."),
    # support tickets
    ("ticket", "Ticket #{NUM}: customer {PERSON} reports that the invoice dated {DATE} was charged twice."),
    ("ticket", "Caller {PERSON} from {CITY} asked for a callback at {PHONE}."),
    ("ticket", "Customer cannot log in; account email is {EMAIL}."),
    ("ticket", "Refund of {MONEY} approved for order {NUM} by {PERSON}."),
    ("ticket", "Escalated to the {ORG} support team on {DATE} after {NUM} failed attempts."),
    ("ticket", "The customer says the {PRODUCT} stopped working after the last update."),
    ("ticket", "Status changed from open to pending at {TIME}; waiting for the customer to reply."),
    ("ticket", "Reset the password for {EMAIL} and confirmed by phone at {PHONE}."),
    ("ticket", "Ticket #{NUM} closed: duplicate of an earlier report about the {PRODUCT}."),
    ("ticket", "{PERSON} from {ORG} called about a delivery to {CITY} that is {NUM} days late."),
    # invoices
    ("invoice", "Invoice {NUM} issued by {ORG} to {ORG2} for {MONEY}, due {DATE}."),
    ("invoice", "Amount due: {MONEY}. Payment terms: 30 days from {DATE}."),
    ("invoice", "Please remit {MONEY} to {ORG}, {CITY}, quoting reference {NUM}."),
    ("invoice", "Total {MONEY} including tax; questions to billing at {EMAIL}."),
    ("invoice", "Paid in full on {DATE}; the balance of {MONEY} has been cleared."),
    ("invoice", "{NUM} units of {PRODUCT} at {MONEY} each, shipped from {CITY}."),
    ("invoice", "Late fee of {MONEY} added because payment was not received by {DATE}."),
    ("invoice", "All invoices are payable by bank transfer within {NUM} days."),
    # chat messages
    ("chat", "hey {PERSON}, are we still on for lunch in {CITY} on {DATE}?"),
    ("chat", "just landed in {CITY}, call me at {PHONE} when you're free"),
    ("chat", "lol {PERSON} owes me {MONEY} for the tickets"),
    ("chat", "can you send it to {EMAIL} instead? the other inbox is full"),
    ("chat", "ok sounds good, see you then!"),
    ("chat", "{PERSON} just started at {ORG}, they're moving to {CITY} next month"),
    ("chat", "my new number is {PHONE}, save it"),
    ("chat", "did {PERSON} ever pay back the {MONEY}? asking for {PERSON2}"),
    ("chat", "running {NUM} minutes late, start without me"),
    # HR notes
    ("hr", "{PERSON} joined {ORG} as {JOB} on {DATE} with an annual salary of {MONEY}."),
    ("hr", "Emergency contact for {PERSON}: {PERSON2}, {PHONE}."),
    ("hr", "Relocation approved: {PERSON} moves from {CITY} to {CITY2} on {DATE}."),
    ("hr", "Performance review for {PERSON} scheduled on {DATE}; reviewer {PERSON2}."),
    ("hr", "Expense claim of {MONEY} submitted by {PERSON} for travel to {CITY}."),
    ("hr", "Please update the personal email of {PERSON} to {EMAIL}."),
    ("hr", "The annual leave policy was updated and applies to all staff."),
    ("hr", "{PERSON} resigned effective {DATE}; exit interview held by {PERSON2}."),
    ("hr", "Candidate {PERSON} previously worked at {ORG} and {ORG2} as {JOB}."),
    # other notices: bookings, deliveries, banking, facilities
    ("notice", "Your flight to {CITY} departs on {DATE} at {TIME}."),
    ("notice", "Package {NUM} was delivered in {CITY} and signed for by {PERSON}."),
    ("notice", "Wire transfer of {MONEY} from {ORG} received on {DATE}."),
    ("notice", "The board of {ORG} meets in {CITY} on {DATE} to approve a budget of {MONEY}."),
    ("notice", "Contact {PERSON} at {EMAIL} or {PHONE} for access to the building."),
    ("notice", "Reminder: the quarterly report on the {PRODUCT} rollout is due next week."),
    ("notice", "On {DATE}, {ORG} opened a new office in {CITY}."),
    ("notice", "Transaction declined: {MONEY} at {ORG} on {DATE}."),
    ("notice", "Your appointment with {PERSON} is confirmed for {DATE} at {TIME}."),
    ("notice", "The server maintenance window starts at {TIME} and lasts {NUM} minutes."),
    ("notice", "Hello {PERSON}, your subscription to {ORG} renews on {DATE} for {MONEY}."),
    ("notice", "Sent from {CITY}: {PERSON} will bring the documents."),
    ("notice", "Vendor {ORG} moved its billing office to {CITY}; contact {EMAIL}."),
    ("notice", "Voicemail from {PHONE} at {TIME}: please call back about the {PRODUCT} quote."),
)

_SLOT = re.compile(r"\{([A-Z]+)(\d?)\}")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_PRODUCTS = ("router", "mobile app", "billing portal", "printer", "laptop", "headset", "smart thermostat",
             "payroll module", "VPN client", "coffee machine", "scanner", "standing desk", "web dashboard",
             "backup service", "label printer", "docking station")


def template_split(seed: int = TEMPLATE_SEED) -> tuple[list[int], list[int]]:
    """Indices into :data:`TEMPLATES` of the training and test templates (disjoint, sorted).

    The templates without entities form a group of their own, the others are grouped by genre; within each
    group the templates are shuffled with ``seed`` and the first ``round(TEST_FRACTION * n)`` go to test, so
    both splits hold every genre and sentences without entities.
    """
    rng = random.Random(f"pii-templates/{seed}")
    group = [g if template_types(t) else "none" for g, t in TEMPLATES]
    train, test = [], []
    for key in dict.fromkeys(group):
        ids = [i for i, g in enumerate(group) if g == key]
        rng.shuffle(ids)
        k = round(TEST_FRACTION * len(ids))
        test += ids[:k]
        train += ids[k:]
    return sorted(train), sorted(test)


def template_types(template: str) -> set[str]:
    """The entity types of a template's slots."""
    return {kind for kind, _ in _SLOT.findall(template) if kind in ENTITY_TYPES}


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date(rng: random.Random, years: tuple[int, int]) -> str:
    first, last = dt.date(years[0], 1, 1), dt.date(years[1], 12, 31)
    d = first + dt.timedelta(days=rng.randrange((last - first).days + 1))
    month = _MONTHS[d.month - 1]
    return rng.choice((f"{month} {d.day}, {d.year}", f"{d.day} {month} {d.year}", d.isoformat(),
                       f"{d.month:02d}/{d.day:02d}/{d.year}", f"{month[:3]} {d.day}, {d.year}",
                       f"{_ordinal(d.day)} of {month} {d.year}"))


def _money(rng: random.Random) -> str:
    amount = round(10 ** rng.uniform(0.7, 4.7), 2)  # about 5 to 50,000, log-uniform
    whole = f"{int(amount):,}"
    cents = f"{amount:,.2f}"
    return rng.choice((f"${cents}", f"${cents}", f"${whole}", f"€{cents}", f"£{cents}", f"{cents} USD",
                       f"EUR {cents}", f"USD {whole}"))


def _time(rng: random.Random) -> str:
    hour, minute = rng.randrange(7, 20), rng.choice((0, 15, 30, 45))
    if rng.random() < 0.5:
        return f"{hour}:{minute:02d}"
    return f"{(hour - 1) % 12 + 1}:{minute:02d} {'am' if hour < 12 else 'pm'}"


class _Values:
    """Draws slot values for one split: Faker generators seeded per locale, plus a ``random.Random``."""

    def __init__(self, split: str, seed: int):
        from faker import Faker

        self.split = split
        self.rng = random.Random(f"pii-{split}/{seed}")
        locales = sorted({loc for pool in TEST_LOCALES.values() for loc in pool}) if split == "test" \
            else [TRAIN_LOCALE]
        self.fakers = {}
        for k, loc in enumerate(locales):
            fake = Faker(loc)
            fake.seed_instance(seed * 1000 + (500 if split == "test" else 0) + k)
            self.fakers[loc] = fake

    def _fake(self, kind: str):
        if self.split == "train":
            return self.fakers[TRAIN_LOCALE]
        return self.fakers[self.rng.choice(TEST_LOCALES[kind])]

    def draw(self, kind: str) -> str:
        rng = self.rng
        if kind == "PERSON":
            fake = self._fake(kind)
            return f"{fake.first_name()} {fake.last_name()}"
        if kind == "ORG":
            return self._fake(kind).company()
        if kind == "CITY":
            return self._fake(kind).city()
        if kind == "PHONE":
            return self._fake(kind).phone_number()
        if kind == "EMAIL":
            fake = self._fake(kind)
            return fake.company_email() if rng.random() < 0.3 else fake.email()
        if kind == "JOB":
            return self._fake(kind).job()
        if kind == "DATE":
            return _date(rng, DATE_YEARS[self.split])
        if kind == "MONEY":
            return _money(rng)
        if kind == "TIME":
            return _time(rng)
        if kind == "NUM":
            return str(rng.randrange(2, 10 ** rng.randint(1, 6)))
        if kind == "PRODUCT":
            return rng.choice(_PRODUCTS)
        raise ValueError(f"unknown slot {kind!r}")


def fill(template: str, draw) -> tuple[str, list[list]]:
    """The text of ``template`` with its slots filled by ``draw(kind)`` and the ``[start, end, type]`` span of
    each entity value; a slot named twice gets the same value."""
    values: dict[str, str] = {}
    parts: list[str] = []
    spans: list[list] = []
    pos = 0
    length = 0
    for m in _SLOT.finditer(template):
        literal = template[pos:m.start()]
        parts.append(literal)
        length += len(literal)
        kind, slot = m.group(1), m.group(1) + m.group(2)
        if slot not in values:
            value = draw(kind)
            # a second value of a type differs from the first (two people, two cities)
            while any(v == value for s, v in values.items() if s.rstrip("0123456789") == kind):
                value = draw(kind)
            values[slot] = value
        value = values[slot]
        if kind in ENTITY_TYPES:
            spans.append([length, length + len(value), kind])
        parts.append(value)
        length += len(value)
        pos = m.end()
    parts.append(template[pos:])
    return "".join(parts), spans


def pii_sentences(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The raw records of both splits: ``{"text", "spans", "template"}`` (``spans`` as ``[start, end, type]``,
    ``template`` the index into :data:`TEMPLATES`).

    Raises:
        DataError: a negative count, or too few test sentences free of training entity strings
            (not expected at sane sizes).
    """
    if n_train < 0 or n_test < 0:
        raise DataError(f"pii-ner: the sentence counts must be >= 0; got n_train={n_train}, n_test={n_test}.")
    train_ids, test_ids = template_split()
    out: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for split, ids, n in (("train", train_ids, n_train), ("test", test_ids, n_test)):
        values = _Values(split, seed)
        records: list[dict] = []
        tries = 0
        while len(records) < n:
            tries += 1
            if tries > 20 * n + 100:
                raise DataError(f"pii-ner: only {len(records)} of {n} {split} sentences could be made without "
                                f"repeating a training entity string; ask for fewer.")
            t = values.rng.choice(ids)
            text, spans = fill(TEMPLATES[t][1], values.draw)
            strings = {text[s:e] for s, e, _ in spans}
            if split == "test" and strings & seen:
                continue
            if split == "train":
                seen |= strings
            records.append({"text": text, "spans": spans, "template": t})
        out[split] = records
    return out["train"], out["test"]


def records_to_data(records: Sequence[dict], *, name: str, source: str = "",
                    label_names: Sequence[str] | None = None) -> TaskData:
    """``{"text", "spans"}`` records as token-classification :class:`TaskData` (words and IOB2 tags)."""
    words, tags, where = [], [], []
    for i, rec in enumerate(records):
        place = f"{name}, sentence {i + 1}"
        w, t = spans_to_tags(rec["text"], rec["spans"], place)
        words.append(w)
        tags.append(t)
        where.append(place)
    return token_data(words, tags, name=name, source=source, label_names=label_names, scheme="iob2", where=where)


def build_pii(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> tuple[TaskData, TaskData]:
    """The PII corpus as ``(train, test)`` token-classification data (see the module docstring).

    Args:
        n_train, n_test: sentences per split.
        seed: seed of the values (the template split is fixed).
    """
    import faker

    train_rec, test_rec = pii_sentences(n_train, n_test, seed)
    train_ids, test_ids = template_split()
    source = (f"synthetic PII sentences: Faker {faker.VERSION} values, seed {seed}, "
              f"{len(train_ids)} train / {len(test_ids)} test templates")
    # both splits encode with the full tag set, in canonical order, whatever a small draw happens to hold
    names = tag_order({f"{p}-{k}" for k in ENTITY_TYPES for p in "BI"})
    train = records_to_data(train_rec, name="pii-ner-train", source=f"{source} (train, {TRAIN_LOCALE})",
                            label_names=names)
    test = records_to_data(test_rec, name="pii-ner-test", source=f"{source} (test, other locales)",
                           label_names=names)
    return train, test


def write_jsonl(path: str | Path, splits: dict[str, list[dict]]) -> int:
    """Write the records as JSON lines ``{"text", "spans", "split"}``; returns the line count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for split, records in splits.items():
            for rec in records:
                fh.write(json.dumps({"text": rec["text"], "spans": rec["spans"], "split": split},
                                    ensure_ascii=False) + "\n")
                n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "test", "both"), default="both", help="which split(s) to write")
    args = parser.parse_args(argv)
    train, test = pii_sentences(args.n_train, args.n_test, args.seed)
    chosen = {k: v for k, v in (("train", train), ("test", test)) if args.split in (k, "both")}
    n = write_jsonl(args.out, chosen)
    print(f"{args.out}: {n} sentences ({', '.join(f'{k} {len(v)}' for k, v in chosen.items())})")


if __name__ == "__main__":
    main()
