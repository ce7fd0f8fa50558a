"""Bank data in the PKDD'99 Berka format: districts, accounts, clients, dispositions, cards,
loans, standing orders and transactions with consistent running balances.

Accounts are generated in chunks; every per-event step is vectorised. Each account has an
owner (and sometimes a disponent), opens between 1993 and 1997, and from then on until
the end of 1998 has monthly cycles of: income (salary transfer, pension ``DUCHOD``, or
cash deposits ``VKLAD``), standing-order payments (``SIPO``, ``POJISTNE``, ``LEASING``,
blank), loan instalments (``UVER``), cash and card withdrawals, the statement fee
(``SLUZBY``), interest on a positive balance (``UROK``) and penalty interest on a negative
one or a bad loan (``SANKC. UROK``).

Dormant accounts (planted): their client-initiated activity fades over
``DORMANCY_FADE_DAYS`` and stops at ``dormant_since``; afterwards only bank-initiated
transactions remain (k_symbol ``SLUZBY``, ``UROK``, ``SANKC. UROK`` and ``UVER``).

Balances: transactions of an account ordered by (date, trans_id) satisfy
``balance = previous balance + amount`` for credits (type ``PRIJEM``) and ``- amount`` for
debits (``VYDAJ``, ``VYBER``), starting from 0 before the first one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import csvtext

BANK_START = np.datetime64("1993-01-01")
BANK_END = np.datetime64("1998-12-31")
LAST_OPENING = np.datetime64("1997-12-29")
BANK_DAYS = int((BANK_END - BANK_START).astype(int)) + 1
EOL = "\r\n"

FREQUENCIES = ("POPLATEK MESICNE", "POPLATEK TYDNE", "POPLATEK PO OBRATU")
FREQUENCY_WEIGHTS = (0.926, 0.053, 0.021)
BANK_CODES = ("AB", "CD", "EF", "GH", "IJ", "KL", "MN", "OP", "QR", "ST", "UV", "WX", "YZ")
ORDER_SYMBOLS = ("SIPO", " ", "POJISTNE", "LEASING")
ORDER_SYMBOL_WEIGHTS = (0.61, 0.24, 0.09, 0.06)
MAX_ORDERS = 4                       # plus one UVER order for a loan
CARD_SHARE, LOAN_SHARE, DISPONENT_SHARE = 0.20, 0.15, 0.19
DORMANT_SHARE, DORMANCY_FADE_DAYS = 0.15, 180.0
MONTHLY_FEE_CENTS = 1460
MONTHLY_INTEREST_RATE = 0.001

# Transaction kinds: (type, operation, k_symbol, sign, client-initiated). Within a day they
# are booked in this order, so the month-end fee, interest and penalty come last.
KINDS = (
    ("PRIJEM", "VKLAD", "", 1, True),               # 0 opening deposit
    ("PRIJEM", "VKLAD", "", 1, True),               # 1 cash deposit
    ("PRIJEM", "PREVOD Z UCTU", "", 1, True),       # 2 salary
    ("PRIJEM", "PREVOD Z UCTU", "DUCHOD", 1, True),  # 3 pension
    ("VYDAJ", "PREVOD NA UCET", "SIPO", -1, True),   # 4..7 standing orders by k_symbol
    ("VYDAJ", "PREVOD NA UCET", " ", -1, True),
    ("VYDAJ", "PREVOD NA UCET", "POJISTNE", -1, True),
    ("VYDAJ", "PREVOD NA UCET", "LEASING", -1, True),
    ("VYDAJ", "PREVOD NA UCET", "UVER", -1, False),  # 8 loan instalment
    ("VYDAJ", "VYBER", "", -1, True),                # 9 cash withdrawal
    ("VYBER", "VYBER", "", -1, True),                # 10 cash withdrawal booked as type VYBER
    ("VYDAJ", "VYBER KARTOU", "", -1, True),         # 11 card withdrawal
    ("VYDAJ", "VYBER", "SLUZBY", -1, False),         # 12 statement fee
    ("PRIJEM", "", "UROK", 1, False),                # 13 interest
    ("VYDAJ", "VYBER", "SANKC. UROK", -1, False),    # 14 penalty interest
)
(OPENING, DEPOSIT, SALARY, PENSION, ORDER_SIPO, ORDER_BLANK, ORDER_INSURANCE, ORDER_LEASING, LOAN_PAYMENT,
 WITHDRAWAL, WITHDRAWAL_VYBER, CARD_WITHDRAWAL, FEE, INTEREST, PENALTY) = range(len(KINDS))
ORDER_KIND = {"SIPO": ORDER_SIPO, " ": ORDER_BLANK, "POJISTNE": ORDER_INSURANCE, "LEASING": ORDER_LEASING}
_SIGN = np.array([k[3] for k in KINDS], dtype=np.int64)
_CLIENT_INITIATED = np.array([k[4] for k in KINDS])

TRANS_HEADER = '"trans_id";"account_id";"date";"type";"operation";"amount";"balance";"k_symbol";"bank";"account"'
HEADERS = {
    "account": '"account_id";"district_id";"frequency";"date"',
    "client": '"client_id";"birth_number";"district_id"',
    "disp": '"disp_id";"client_id";"account_id";"type"',
    "card": '"card_id";"disp_id";"type";"issued"',
    "loan": '"loan_id";"account_id";"date";"amount";"duration";"payments";"status"',
    "order": '"order_id";"account_id";"bank_to";"account_to";"amount";"k_symbol"',
    "trans": TRANS_HEADER,
    "district": ";".join(f"A{i}" for i in range(1, 17)),
}
LOAN_ID_OFFSET, ORDER_ID_OFFSET, CARD_ID_OFFSET = 4958, 29400, 0

DISTRICTS = (
    ("Hl.m. Praha", "Prague"), ("Benesov", "central Bohemia"), ("Beroun", "central Bohemia"),
    ("Kladno", "central Bohemia"), ("Kolin", "central Bohemia"), ("Kutna Hora", "central Bohemia"),
    ("Melnik", "central Bohemia"), ("Mlada Boleslav", "central Bohemia"), ("Nymburk", "central Bohemia"),
    ("Praha - vychod", "central Bohemia"), ("Praha - zapad", "central Bohemia"), ("Pribram", "central Bohemia"),
    ("Rakovnik", "central Bohemia"), ("Ceske Budejovice", "south Bohemia"), ("Cesky Krumlov", "south Bohemia"),
    ("Jindrichuv Hradec", "south Bohemia"), ("Pelhrimov", "south Bohemia"), ("Pisek", "south Bohemia"),
    ("Prachatice", "south Bohemia"), ("Strakonice", "south Bohemia"), ("Tabor", "south Bohemia"),
    ("Domazlice", "west Bohemia"), ("Cheb", "west Bohemia"), ("Karlovy Vary", "west Bohemia"),
    ("Klatovy", "west Bohemia"), ("Plzen - mesto", "west Bohemia"), ("Plzen - jih", "west Bohemia"),
    ("Plzen - sever", "west Bohemia"), ("Rokycany", "west Bohemia"), ("Sokolov", "west Bohemia"),
    ("Tachov", "west Bohemia"), ("Ceska Lipa", "north Bohemia"), ("Decin", "north Bohemia"),
    ("Chomutov", "north Bohemia"), ("Jablonec n. Nisou", "north Bohemia"), ("Liberec", "north Bohemia"),
    ("Litomerice", "north Bohemia"), ("Louny", "north Bohemia"), ("Most", "north Bohemia"),
    ("Teplice", "north Bohemia"), ("Usti nad Labem", "north Bohemia"), ("Havlickuv Brod", "east Bohemia"),
    ("Hradec Kralove", "east Bohemia"), ("Chrudim", "east Bohemia"), ("Jicin", "east Bohemia"),
    ("Nachod", "east Bohemia"), ("Pardubice", "east Bohemia"), ("Rychnov nad Kneznou", "east Bohemia"),
    ("Semily", "east Bohemia"), ("Svitavy", "east Bohemia"), ("Trutnov", "east Bohemia"),
    ("Usti nad Orlici", "east Bohemia"), ("Blansko", "south Moravia"), ("Brno - mesto", "south Moravia"),
    ("Brno - venkov", "south Moravia"), ("Breclav", "south Moravia"), ("Hodonin", "south Moravia"),
    ("Jihlava", "south Moravia"), ("Kromeriz", "south Moravia"), ("Prostejov", "south Moravia"),
    ("Trebic", "south Moravia"), ("Uherske Hradiste", "south Moravia"), ("Vyskov", "south Moravia"),
    ("Zlin", "south Moravia"), ("Znojmo", "south Moravia"), ("Zdar nad Sazavou", "south Moravia"),
    ("Bruntal", "north Moravia"), ("Frydek - Mistek", "north Moravia"), ("Jesenik", "north Moravia"),
    ("Karvina", "north Moravia"), ("Novy Jicin", "north Moravia"), ("Olomouc", "north Moravia"),
    ("Opava", "north Moravia"), ("Ostrava - mesto", "north Moravia"), ("Prerov", "north Moravia"),
    ("Sumperk", "north Moravia"), ("Vsetin", "north Moravia"),
)
# The real district table has one district with "?" for A12 and A15; so does this one.
UNKNOWN_DISTRICT_VALUE = "?"


# --------------------------------------------------------------------------- dates

def _day_dates(days: np.ndarray) -> np.ndarray:
    return BANK_START + np.asarray(days).astype("timedelta64[D]")


def yymmdd(dates: np.ndarray) -> np.ndarray:
    """Berka date integers YYMMDD of numpy dates."""
    dates = np.asarray(dates, dtype="datetime64[D]")
    year = dates.astype("datetime64[Y]").astype(np.int64) + 1970
    month_start = dates.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    day = (dates - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    return (year % 100) * 10_000 + month * 100 + day


_DAY_YYMMDD_TEXT = None


def day_text(days: np.ndarray) -> pa.Array:
    """YYMMDD text of days since BANK_START (through a lookup over the whole window)."""
    global _DAY_YYMMDD_TEXT
    if _DAY_YYMMDD_TEXT is None:
        _DAY_YYMMDD_TEXT = csvtext.int_text(yymmdd(_day_dates(np.arange(BANK_DAYS))))
    return _DAY_YYMMDD_TEXT.take(pa.array(np.asarray(days, dtype=np.int64)))


def birth_number(birth: np.ndarray, female: np.ndarray) -> np.ndarray:
    """Berka birth_number YYMMDD, with 50 added to the month for women."""
    return yymmdd(birth) + np.where(female, 5000, 0)


# --------------------------------------------------------------------------- districts

def district_rows(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Rendered district.asc rows and each district's share of clients."""
    n = len(DISTRICTS)
    inhabitants = np.round(np.exp(rng.normal(np.log(110_000), 0.35, n))).astype(np.int64)
    inhabitants[0] = 1_204_953
    urban = np.clip(rng.normal(60, 12, n), 33, 90).round(1)
    urban[0] = 100.0
    salary = np.round(rng.normal(9000, 700, n)).astype(np.int64)
    salary[0] = 12541
    rows = []
    unknown = int(rng.integers(1, n))
    for k in range(n):
        small, medium, large = rng.integers(0, 90), rng.integers(0, 60), rng.integers(0, 20)
        cities = int(rng.integers(1, 12))
        u95, u96 = round(float(rng.uniform(0.2, 7.0)), 2), 0.0
        u96 = round(u95 + float(rng.uniform(0.1, 1.5)), 2)
        crimes95 = int(inhabitants[k] * rng.uniform(0.015, 0.05))
        crimes96 = int(crimes95 * rng.uniform(0.9, 1.15))
        entrepreneurs = int(rng.integers(80, 170))
        a12 = UNKNOWN_DISTRICT_VALUE if k == unknown else f"{u95:.2f}"
        a15 = UNKNOWN_DISTRICT_VALUE if k == unknown else str(crimes95)
        name, region = DISTRICTS[k]
        fields = [str(k + 1), csvtext.quoted(name), csvtext.quoted(region), str(inhabitants[k]),
                  str(small), str(medium), str(large), str(1 if k == 0 else rng.integers(0, 4)), str(cities),
                  f"{urban[k]:.1f}", str(salary[k]), a12, f"{u96:.2f}", str(entrepreneurs), a15, str(crimes96)]
        rows.append(";".join(fields) + EOL)
    weight = inhabitants.astype(float) ** 0.9
    return rows, weight / weight.sum()


# --------------------------------------------------------------------------- accounts

@dataclass
class AccountBlock:
    """Planted facts of a chunk of accounts (arrays indexed by account within the chunk)."""

    account_id: np.ndarray
    district: np.ndarray            # 1-based district id
    frequency: np.ndarray
    open_day: np.ndarray
    owner_birth: np.ndarray
    owner_female: np.ndarray
    owner_district: np.ndarray
    owner_client_id: np.ndarray
    disponent_client_id: np.ndarray  # 0 when the account has none
    disponent_birth: np.ndarray
    disponent_female: np.ndarray
    income_kind: np.ndarray          # SALARY, PENSION or DEPOSIT
    income_cents: np.ndarray
    income_day: np.ndarray           # day of month 1..28
    employer: np.ndarray             # partner index
    card_type: np.ndarray            # -1 none, else index into CARD_TYPES
    card_day: np.ndarray
    loan: np.ndarray                 # bool
    loan_day: np.ndarray
    loan_months: np.ndarray
    loan_payment_cents: np.ndarray
    loan_bad: np.ndarray
    dormant_day: np.ndarray          # BANK_DAYS when not dormant


CARD_TYPES = ("classic", "junior", "gold")


def _month_index(days: np.ndarray) -> np.ndarray:
    """Months since January 1993 of days since BANK_START."""
    return (_day_dates(days).astype("datetime64[M]") - BANK_START.astype("datetime64[M]")).astype(np.int64)


def _month_start_day(month: np.ndarray) -> np.ndarray:
    start = BANK_START.astype("datetime64[M]") + np.asarray(month).astype("timedelta64[M]")
    return (start.astype("datetime64[D]") - BANK_START).astype(np.int64)


LAST_MONTH = int(_month_index(np.array([BANK_DAYS - 1]))[0])


def draw_accounts(rng, first_account_id: int, disponent: np.ndarray, first_client_id: int,
                  district_share: np.ndarray) -> AccountBlock:
    """Owners, disponents, income, cards, loans and dormancy of a chunk of accounts."""
    n = len(disponent)
    account_id = first_account_id + np.arange(n)
    clients_before = np.cumsum(1 + disponent) - (1 + disponent)
    owner_client = first_client_id + clients_before
    disponent_client = np.where(disponent, owner_client + 1, 0)
    district = 1 + rng.choice(len(DISTRICTS), size=n, p=district_share)
    last_open = int((LAST_OPENING - BANK_START).astype(int))
    open_day = rng.integers(0, last_open, n)

    def births(count):
        age_days = rng.integers(18 * 365, 87 * 365, count)
        return np.datetime64("1998-12-31") - age_days.astype("timedelta64[D]")

    owner_birth, disp_birth = births(n), births(n)
    owner_female = rng.random(n) < 0.5
    disp_female = np.where(rng.random(n) < 0.8, ~owner_female, owner_female)
    owner_district = np.where(rng.random(n) < 0.85, district, 1 + rng.choice(len(DISTRICTS), size=n, p=district_share))
    birth_year = owner_birth.astype("datetime64[Y]").astype(np.int64) + 1970
    pensioner = birth_year <= 1936
    salaried = ~pensioner & (rng.random(n) < 0.7)
    income_kind = np.where(pensioner, PENSION, np.where(salaried, SALARY, DEPOSIT))
    income = np.where(pensioner, np.exp(rng.normal(np.log(5500), 0.2, n)), np.exp(rng.normal(np.log(12000), 0.35, n)))
    income_cents = np.round(income).astype(np.int64) * 100

    has_card = rng.random(n) < CARD_SHARE
    card_day = open_day + rng.integers(30, 900, n)
    has_card &= card_day < BANK_DAYS
    young = birth_year >= 1978
    card_type = np.where(young, 1, np.where(rng.random(n) < 0.12, 2, 0))
    card_type = np.where(has_card, card_type, -1)

    loan_day = open_day + rng.integers(60, 800, n)
    loan = (rng.random(n) < LOAN_SHARE) & (loan_day < BANK_DAYS - 60)
    loan_months = rng.choice([12, 24, 36, 48, 60], size=n)
    loan_payment = np.round(income * rng.uniform(0.08, 0.25, n)).astype(np.int64) * 100

    dormant_from = np.maximum(open_day + 365, int((np.datetime64("1997-01-01") - BANK_START).astype(int)))
    dormant_to = int((np.datetime64("1998-09-30") - BANK_START).astype(int))
    dormant = (rng.random(n) < DORMANT_SHARE) & (dormant_from < dormant_to)
    dormant_day = np.where(dormant, dormant_from + (rng.random(n) * (dormant_to - dormant_from)).astype(np.int64),
                           BANK_DAYS)
    return AccountBlock(
        account_id=account_id, district=district,
        frequency=rng.choice(len(FREQUENCIES), size=n, p=FREQUENCY_WEIGHTS), open_day=open_day,
        owner_birth=owner_birth, owner_female=owner_female, owner_district=owner_district,
        owner_client_id=owner_client, disponent_client_id=disponent_client, disponent_birth=disp_birth,
        disponent_female=disp_female, income_kind=income_kind, income_cents=income_cents,
        income_day=rng.integers(1, 29, n), employer=np.arange(n), card_type=card_type, card_day=card_day,
        loan=loan, loan_day=loan_day, loan_months=loan_months, loan_payment_cents=loan_payment,
        loan_bad=rng.random(n) < 0.11, dormant_day=dormant_day)


@dataclass
class Orders:
    """Standing orders of a chunk (one row per order)."""

    order_id: np.ndarray
    account: np.ndarray          # account index within the chunk
    kind: np.ndarray
    amount_cents: np.ndarray
    day_of_month: np.ndarray
    partner: np.ndarray          # partner index


def draw_orders(rng, block: AccountBlock, first_partner: int) -> Orders:
    n = len(block.account_id)
    count = np.minimum(rng.poisson(1.1, n), MAX_ORDERS)
    account = np.repeat(np.arange(n), count)
    slot = np.arange(len(account)) - np.repeat(np.cumsum(count) - count, count)
    symbol = rng.choice(len(ORDER_SYMBOLS), size=len(account), p=ORDER_SYMBOL_WEIGHTS)
    kind = np.array([ORDER_KIND[s] for s in ORDER_SYMBOLS])[symbol]
    amount = np.round(block.income_cents[account] * rng.uniform(0.03, 0.15, len(account))).astype(np.int64)
    loans = np.nonzero(block.loan)[0]
    account = np.concatenate([account, loans])
    slot = np.concatenate([slot, np.full(len(loans), MAX_ORDERS)])
    kind = np.concatenate([kind, np.full(len(loans), LOAN_PAYMENT)])
    amount = np.concatenate([amount, block.loan_payment_cents[loans]])
    order = np.lexsort((slot, account))
    account, slot, kind, amount = account[order], slot[order], kind[order], amount[order]
    first_account_index = block.account_id[0] - 1
    return Orders(order_id=ORDER_ID_OFFSET + (first_account_index + account) * (MAX_ORDERS + 1) + slot,
                  account=account, kind=kind, amount_cents=amount,
                  day_of_month=rng.integers(1, 29, len(account)), partner=first_partner + np.arange(len(account)))


# --------------------------------------------------------------------------- transactions

@dataclass
class Events:
    account: np.ndarray
    day: np.ndarray
    kind: np.ndarray
    amount_cents: np.ndarray
    partner: np.ndarray          # -1 for none

    @staticmethod
    def concat(parts: list["Events"]) -> "Events":
        return Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in Events.__dataclass_fields__))

    def subset(self, index) -> "Events":
        return Events(*(getattr(self, f)[index] for f in Events.__dataclass_fields__))


def _events(account, day, kind, amount, partner=None) -> Events:
    account = np.asarray(account, dtype=np.int64)
    partner = np.full(len(account), -1, dtype=np.int64) if partner is None else np.asarray(partner, dtype=np.int64)
    kind = np.broadcast_to(np.asarray(kind, dtype=np.int64), account.shape).copy()
    return Events(account, np.asarray(day, dtype=np.int64), kind, np.asarray(amount, dtype=np.int64), partner)


def _round_to(cents: np.ndarray, step_cents: int) -> np.ndarray:
    return np.maximum(step_cents, np.round(cents / step_cents).astype(np.int64) * step_cents)


def monthly_events(rng, block: AccountBlock, orders: Orders) -> Events:
    """Every transaction except interest and penalties, month by month from the opening."""
    n = len(block.account_id)
    first_month = _month_index(block.open_day)
    months = LAST_MONTH - first_month + 1
    row_account = np.repeat(np.arange(n), months)
    row_month = first_month[row_account] + np.arange(len(row_account)) - np.repeat(np.cumsum(months) - months, months)
    start = _month_start_day(row_month)
    end = _month_start_day(row_month + 1) - 1
    open_day = block.open_day[row_account]
    fade = np.clip((block.dormant_day[row_account] - (start + 15)) / DORMANCY_FADE_DAYS, 0.0, 1.0)
    activity = 0.2 + 0.8 * fade

    parts = [_events(np.arange(n), block.open_day, OPENING,
                     _round_to(np.exp(rng.normal(np.log(1000), 0.5, n)) * 100, 10_000))]
    income_day = start + block.income_day[row_account] - 1
    earns = (block.income_kind[row_account] != DEPOSIT) & (income_day >= open_day)
    parts.append(_events(row_account[earns], income_day[earns], block.income_kind[row_account][earns],
                         block.income_cents[row_account][earns], block.employer[row_account][earns]))

    def random_days(rows, count):
        acc = np.repeat(rows, count)
        lo = np.maximum(start[acc], open_day[acc])
        return acc, lo + (rng.random(len(acc)) * (end[acc] - lo + 1)).astype(np.int64)

    depositor = np.nonzero(block.income_kind[row_account] == DEPOSIT)[0]
    rows, day = random_days(depositor, rng.poisson(1.5 * activity[depositor]))
    amount = _round_to(block.income_cents[row_account[rows]] / 1.5 * np.exp(rng.normal(0, 0.3, len(rows))), 100)
    parts.append(_events(row_account[rows], day, DEPOSIT, amount))

    # Standing orders and loan instalments: monthly from the month after opening (or the loan).
    per_order_rows = months[orders.account] - 1
    o = np.repeat(np.arange(len(orders.account)), np.maximum(per_order_rows, 0))
    offset = np.arange(len(o)) - np.repeat(np.cumsum(np.maximum(per_order_rows, 0)) - np.maximum(per_order_rows, 0),
                                           np.maximum(per_order_rows, 0))
    o_month = first_month[orders.account[o]] + 1 + offset
    o_day = _month_start_day(o_month) + orders.day_of_month[o] - 1
    is_loan = orders.kind[o] == LOAN_PAYMENT
    loan_first = _month_index(block.loan_day[orders.account[o]]) + 1
    due = ~is_loan | ((o_month >= loan_first) & (o_month < loan_first + block.loan_months[orders.account[o]]))
    parts.append(_events(orders.account[o][due], o_day[due], orders.kind[o][due], orders.amount_cents[o][due],
                         orders.partner[o][due]))

    # Withdrawals spend most of what is left after the fixed payments.
    fixed = np.bincount(orders.account, weights=orders.amount_cents, minlength=n)
    spendable = np.maximum(block.income_cents - fixed, 0.1 * block.income_cents)
    # No withdrawals in the opening month, so the first income arrives before the spending.
    after_opening = np.nonzero(row_month > first_month[row_account])[0]
    rows, day = random_days(after_opening, rng.poisson(2.0 * activity[after_opening]))
    amount = _round_to(spendable[row_account[rows]] * 0.42 * np.exp(rng.normal(0, 0.5, len(rows)) - 0.125), 10_000)
    kind = np.where(rng.random(len(rows)) < 0.05, WITHDRAWAL_VYBER, WITHDRAWAL)
    parts.append(_events(row_account[rows], day, kind, amount))

    has_card = block.card_type[row_account] >= 0
    card_rows = np.nonzero(has_card & (row_month > first_month[row_account]))[0]
    rows, day = random_days(card_rows, rng.poisson(1.0 * activity[card_rows]))
    after_issue = day >= block.card_day[row_account[rows]]
    rows, day = rows[after_issue], day[after_issue]
    amount = _round_to(block.income_cents[row_account[rows]] * 0.05 * np.exp(rng.normal(0, 0.5, len(rows))), 100)
    parts.append(_events(row_account[rows], day, CARD_WITHDRAWAL, amount))

    parts.append(_events(row_account, end, FEE, np.full(len(row_account), MONTHLY_FEE_CENTS)))
    events = Events.concat(parts)
    # Dormant accounts: nothing the client initiates from dormant_since on.
    keep = ~(_CLIENT_INITIATED[events.kind] & (events.day >= block.dormant_day[events.account]))
    return events.subset(keep)


def book(rng, events: Events) -> tuple[Events, np.ndarray]:
    """Events in booking order (account, day, kind, random) and the balance after each."""
    n = len(events.account)
    index_bits = max(1, n.bit_length())
    # account < 2^20 per chunk, day < 2^12, kind < 2^4: 36 bits, the rest random and index.
    random_bits = max(0, min(8, 62 - 36 - index_bits))
    key = ((events.account << 16) | (events.day << 4) | events.kind) << (random_bits + index_bits)
    if random_bits:
        key |= rng.integers(0, 1 << random_bits, n, dtype=np.int64) << index_bits
    key |= np.arange(n, dtype=np.int64)
    ordered = events.subset(np.sort(key) & ((1 << index_bits) - 1))
    signed = _SIGN[ordered.kind] * ordered.amount_cents
    running = np.cumsum(signed)
    first = np.r_[True, ordered.account[1:] != ordered.account[:-1]]
    account_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    balance = running - (running[account_start] - signed[account_start])
    return ordered, balance


def interest_and_penalties(rng, block: AccountBlock, booked: Events, balance: np.ndarray) -> Events:
    """Month-end interest on positive balances, penalty interest on negative ones and bad loans."""
    fee = booked.kind == FEE          # the fee is the last booking of every month
    account, day, month_end_balance = booked.account[fee], booked.day[fee], balance[fee]
    positive = month_end_balance > 0
    interest = np.round(month_end_balance * MONTHLY_INTEREST_RATE).astype(np.int64)
    earns = positive & (interest > 0)
    overdrawn = month_end_balance < 0
    penalty = np.maximum(1000, np.round(-month_end_balance * 0.02).astype(np.int64))
    bad_loan = (block.loan_bad[account] & block.loan[account] & (day > block.loan_day[account])
                & (day < block.loan_day[account] + block.loan_months[account] * 30) & (rng.random(len(day)) < 0.25))
    bad_penalty = np.round(block.loan_payment_cents[account] * 0.05).astype(np.int64)
    return Events.concat([
        _events(account[earns], day[earns], INTEREST, interest[earns]),
        _events(account[overdrawn], day[overdrawn], PENALTY, penalty[overdrawn]),
        _events(account[bad_loan & ~overdrawn], day[bad_loan & ~overdrawn], PENALTY, bad_penalty[bad_loan & ~overdrawn]),
    ])


# --------------------------------------------------------------------------- rendering

def _kind_text() -> tuple[list[str], list[str]]:
    type_operation = [f"{csvtext.quoted(t)};{csvtext.quoted(o)}" for t, o, _, _, _ in KINDS]
    symbol = [csvtext.quoted(k) for _, _, k, _, _ in KINDS]
    return type_operation, symbol


def partner_text(rng, count: int) -> list[str]:
    """``"bank";"account"`` of counterparties (employers, payees), with the line ending."""
    banks = rng.choice(BANK_CODES, size=count)
    numbers = rng.integers(1_000_000, 99_999_999, count)
    return [f'"{b}";"{a}"{EOL}' for b, a in zip(banks, numbers)]


def render_transactions(booked: Events, balance: np.ndarray, trans_id: np.ndarray, account_id: np.ndarray,
                        partners: pa.Array) -> pa.Array:
    type_operation, symbol = _kind_text()
    no_partner = pa.scalar(";" + EOL)
    partner = pc.if_else(pa.array(booked.partner < 0), no_partner,
                         partners.take(pa.array(np.maximum(booked.partner, 0))))
    fields = [csvtext.int_text(trans_id), csvtext.int_text(account_id[booked.account]), day_text(booked.day),
              csvtext.take_text(type_operation, booked.kind), csvtext.cents_text(booked.amount_cents),
              csvtext.cents_text(balance), csvtext.take_text(symbol, booked.kind), partner]
    return csvtext.join_fields(fields, ";")


def _rows(fields: list[pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(csvtext.join_fields(fields, ";"), pa.scalar(EOL), "")


def _quoted_take(values, index) -> pa.Array:
    return csvtext.take_text([csvtext.quoted(v) for v in values], index)


@dataclass
class BankChunk:
    tables: dict                    # table name -> rendered rows (pa string array, with EOL)
    rows: dict                      # table name -> row count
    transactions: int
    clients: dict                   # truth columns for the chunk's clients


def table_rows(block: AccountBlock, orders: Orders, order_partners: list[str]) -> dict:
    """account, client, disp, card, loan and order rows of a chunk."""
    n = len(block.account_id)
    has_disp = block.disponent_client_id > 0
    tables = {"account": _rows([csvtext.int_text(block.account_id), csvtext.int_text(block.district),
                                _quoted_take(FREQUENCIES, block.frequency), day_text(block.open_day)])}
    # Clients and dispositions: the owner, then the disponent, account by account.
    client_account = np.repeat(np.arange(n), 1 + has_disp)
    is_disp = np.zeros(len(client_account), dtype=bool)
    is_disp[np.cumsum(1 + has_disp)[has_disp] - 1] = True
    client_id = np.where(is_disp, block.disponent_client_id[client_account], block.owner_client_id[client_account])
    birth = np.where(is_disp, block.disponent_birth[client_account], block.owner_birth[client_account])
    female = np.where(is_disp, block.disponent_female[client_account], block.owner_female[client_account])
    tables["client"] = _rows([csvtext.int_text(client_id),
                              pc.binary_join_element_wise('"', csvtext.int_text(birth_number(birth, female)), '"', ""),
                              csvtext.int_text(block.owner_district[client_account])])
    tables["disp"] = _rows([csvtext.int_text(client_id), csvtext.int_text(client_id),
                            csvtext.int_text(block.account_id[client_account]),
                            _quoted_take(("OWNER", "DISPONENT"), is_disp.astype(np.int64))])
    card = np.nonzero(block.card_type >= 0)[0]
    tables["card"] = _rows([csvtext.int_text(CARD_ID_OFFSET + block.account_id[card]),
                            csvtext.int_text(block.owner_client_id[card]),
                            _quoted_take(CARD_TYPES, block.card_type[card]),
                            pc.binary_join_element_wise(day_text(block.card_day[card]), " 00:00:00", "")])
    loan = np.nonzero(block.loan)[0]
    loan_end = _month_index(block.loan_day[loan]) + block.loan_months[loan]
    finished = loan_end <= LAST_MONTH
    status = np.where(finished, np.where(block.loan_bad[loan], 1, 0), np.where(block.loan_bad[loan], 3, 2))
    tables["loan"] = _rows([csvtext.int_text(LOAN_ID_OFFSET + block.account_id[loan]),
                            csvtext.int_text(block.account_id[loan]), day_text(block.loan_day[loan]),
                            csvtext.int_text(block.loan_payment_cents[loan] // 100 * block.loan_months[loan]),
                            csvtext.int_text(block.loan_months[loan]),
                            csvtext.cents_text(block.loan_payment_cents[loan]),
                            _quoted_take("ABCD", status)])
    symbol_of_kind = np.full(len(KINDS), len(ORDER_SYMBOLS), dtype=np.int64)   # UVER unless listed
    for symbol_index, symbol_name in enumerate(ORDER_SYMBOLS):
        symbol_of_kind[ORDER_KIND[symbol_name]] = symbol_index
    symbol = symbol_of_kind[orders.kind]
    bank_account = pa.array([p[: -len(EOL)] for p in order_partners], pa.string())
    tables["order"] = _rows([csvtext.int_text(orders.order_id), csvtext.int_text(block.account_id[orders.account]),
                             bank_account.take(pa.array(orders.partner - n)), csvtext.cents_text(orders.amount_cents),
                             _quoted_take(ORDER_SYMBOLS + ("UVER",), symbol)])
    return tables, {"client_id": client_id, "account_id": block.account_id[client_account],
                    "type": np.where(is_disp, "DISPONENT", "OWNER"),
                    "dormant_day": block.dormant_day[client_account]}


def bank_chunk(rng, first_account_id: int, disponent: np.ndarray, first_client_id: int, district_share: np.ndarray,
               chunk_index: int, chunk_count: int, trans_handle) -> BankChunk:
    """Generate a chunk of accounts; write its transactions to ``trans_handle``, return the other rows."""
    block = draw_accounts(rng, first_account_id, disponent, first_client_id, district_share)
    n = len(block.account_id)
    employer_partners = partner_text(rng, n)
    orders = draw_orders(rng, block, first_partner=n)
    order_partners = partner_text(rng, len(orders.account))
    events = monthly_events(rng, block, orders)
    booked, balance = book(rng, events)
    events = Events.concat([events, interest_and_penalties(rng, block, booked, balance)])
    booked, balance = book(rng, events)
    # Ids interleave across chunks so chunks can be written independently; within an
    # account they increase in booking order.
    trans_id = 1 + np.arange(len(balance), dtype=np.int64) * chunk_count + chunk_index
    partners = pa.array(employer_partners + order_partners, pa.string())
    for start in range(0, len(balance), csvtext.WRITE_SLICE_ROWS):
        part = slice(start, start + csvtext.WRITE_SLICE_ROWS)
        csvtext.write_lines(trans_handle, render_transactions(booked.subset(part), balance[part], trans_id[part],
                                                              block.account_id, partners))
    tables, clients = table_rows(block, orders, order_partners)
    return BankChunk(tables=tables, rows={k: len(v) for k, v in tables.items()}, transactions=len(balance),
                     clients=clients)
