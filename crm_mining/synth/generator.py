"""The ``generate`` entry point: writes retail, bank, link and truth files chunk by chunk.

Chunks are independent (each has its own random stream derived from the seed and its
index), so they can run in worker processes in any order while the files stay identical
for a seed. The parent process collects each chunk's small results (truth rows, counts)
in chunk order.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import bank, csvtext
from .baskets import ItemsetCounter
from .catalogue import NON_PRODUCT_CODES, build_catalogue
from .customers import RETAIL_LAST_DAY, RETAIL_START, SEGMENTS
from .retail import DEFAULT_LINES_PER_CUSTOMER, FIRST_CUSTOMER_ID, write_retail_chunk

NOISE_PAIR_PRODUCTS = 5              # the most popular noise products; all their pairs are reported
BANK_CHUNK_ACCOUNTS = 10_000
TRUTH_VERSION = 1

# Random streams: spawn keys of np.random.SeedSequence(seed).
_CATALOGUE_STREAM, _RETAIL_STREAM, _BANK_STREAM, _POPULATION_STREAM, _DISTRICT_STREAM = range(5)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# --------------------------------------------------------------------------- tasks (run in workers)

def _retail_task(task: dict) -> dict:
    catalogue = build_catalogue(_rng(task["seed"], _CATALOGUE_STREAM))
    rng = _rng(task["seed"], _RETAIL_STREAM, task["chunk"])
    with open(task["path"], "wb", buffering=1 << 20) as handle:
        chunk = write_retail_chunk(handle, rng, catalogue, task["customers"], task["first_customer"],
                                   task["chunk"], task["chunk_count"], task["lines_per_customer"],
                                   task["linked_client"])
    counter = ItemsetCounter(catalogue, catalogue.most_popular_noise(NOISE_PAIR_PRODUCTS))
    counter.add(chunk.clean_basket_of_line, chunk.clean_product_of_line, chunk.clean_baskets)
    return {"kind": "retail", "path": task["path"], "customers": chunk.customers, "rows": chunk.rows_written,
            "clean_baskets": chunk.clean_baskets, "clean_lines": len(chunk.clean_basket_of_line),
            "invoices": chunk.invoices_numbered, "dirt": chunk.dirt,
            "item_counts": counter.item_counts, "itemset_counts": counter.itemset_counts}


def _bank_task(task: dict) -> dict:
    rng = _rng(task["seed"], _BANK_STREAM, task["chunk"])
    with open(task["trans_part"], "wb", buffering=1 << 20) as handle:
        chunk = bank.bank_chunk(rng, task["first_account_id"], task["disponent"], task["first_client_id"],
                                task["district_share"], task["chunk"], task["chunk_count"], handle)
    tables = {name: bytes(csvtext.lines_bytes(rows)) for name, rows in chunk.tables.items()}
    return {"kind": "bank", "trans_part": task["trans_part"], "tables": tables, "rows": chunk.rows,
            "transactions": chunk.transactions, "clients": chunk.clients}


def _run_task(task: dict) -> dict:
    return _retail_task(task) if task["kind"] == "retail" else _bank_task(task)


# --------------------------------------------------------------------------- population-level draws

def _links(seed: int, customers: int, clients: int, linked: int) -> np.ndarray:
    """client_id linked to each retail customer (0 = not a bank client)."""
    rng = _rng(seed, _POPULATION_STREAM, 0)
    client_of_customer = np.zeros(customers, dtype=np.int64)
    who = rng.choice(customers, size=linked, replace=False)
    client_of_customer[who] = 1 + rng.choice(clients, size=linked, replace=False)
    return client_of_customer


def _disponent_flags(seed: int, clients: int) -> np.ndarray:
    """Which accounts also have a disponent, so that accounts + disponents = clients exactly."""
    accounts = int(round(clients / (1.0 + bank.DISPONENT_SHARE)))
    rng = _rng(seed, _POPULATION_STREAM, 1)
    flags = np.zeros(accounts, dtype=bool)
    flags[rng.choice(accounts, size=clients - accounts, replace=False)] = True
    return flags


# --------------------------------------------------------------------------- helpers

def _add_counts(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def _top_share(values: np.ndarray, share: float = 0.2) -> float:
    if len(values) == 0 or values.sum() <= 0:
        return 0.0
    ordered = np.sort(values)[::-1]
    return float(ordered[: max(1, int(round(share * len(ordered))))].sum() / ordered.sum())


def _day_iso(day: np.ndarray) -> np.ndarray:
    dates = (bank.BANK_START + np.asarray(day).astype("timedelta64[D]")).astype(str)
    return np.where(np.asarray(day) < bank.BANK_DAYS, dates, "")


def _check(customers, lines_per_customer, bank_share, link_share, chunk_customers) -> None:
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if lines_per_customer <= 0:
        raise ValueError(f"lines_per_customer must be positive, got {lines_per_customer}")
    if not 0 <= link_share <= bank_share:
        raise ValueError(f"need 0 <= link_share <= bank_share, got link_share={link_share}, bank_share={bank_share}")
    if chunk_customers < 1:
        raise ValueError(f"chunk_customers must be at least 1, got {chunk_customers}")


def _prepare_dirs(out: Path) -> dict[str, Path]:
    dirs = {name: out / name for name in ("retail", "berka", "link", "truth")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # Parts of an earlier, bigger run would otherwise be read as part of this one.
    for stale in dirs["retail"].glob("part-*.csv"):
        stale.unlink()
    for stale in dirs["berka"].glob(".trans-part-*"):
        stale.unlink()
    return dirs


def _worker_count(tasks: int, workers: int | None) -> int:
    if workers is None:
        # Starting worker processes costs more than it saves for one retail and one bank chunk.
        workers = 1 if tasks <= 2 else min(2, os.cpu_count() or 1)
    return max(1, min(workers, tasks))


def _run_all(tasks: list[dict], workers: int):
    """Results in task order; chunks run in parallel worker processes when that helps."""
    if workers <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    # spawn, not fork: the caller may hold threads (pyarrow pools, a JVM) that fork would copy badly.
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=8) as pool:
        yield from pool.imap(_run_task, tasks)


# --------------------------------------------------------------------------- entry point

def generate(out_dir, *, customers: int = 2000, seed: int = 42, lines_per_customer: float | None = None,
             bank_share: float = 0.6, link_share: float = 0.4, chunk_customers: int = 50_000,
             workers: int | None = None) -> dict:
    """Write a synthetic retail shop, a Berka-format bank, their customer links and the planted truth.

    Parameters
    ----------
    out_dir : str or Path
        Output directory; created if missing. Existing files of an earlier run are overwritten.
    customers : int
        Number of retail customers (CustomerID ``12346`` upwards).
    seed : int
        Random seed: the same arguments give byte-identical files, whatever ``workers``.
    lines_per_customer : float, optional
        Mean clean retail lines per customer (default 100, about the UCI Online Retail
        ratio of 397,924 customer lines to 4,372 customers). Scales basket sizes, and so
        the retail size: about ``customers * lines_per_customer`` clean lines, plus about
        7% planted dirt lines. Below about 25 the mean is not reached exactly: every
        invoice has a line, and bestsellers and rule items add ~1.7 lines per invoice.
    bank_share : float
        Bank clients per retail customer (``round(bank_share * customers)`` clients; about
        1.19 clients per account, ~240 transactions per account).
    link_share : float
        Share of retail customers linked to a bank client (at most ``bank_share``).
    chunk_customers : int
        Customers per retail chunk: one ``retail/part-NNNNN.csv`` per chunk, and the unit
        of memory use (about 1 GB per 50,000 customers at 100 lines each).
    workers : int, optional
        Worker processes for the chunks (default: 1 for one retail and one bank chunk,
        else up to 2). Does not change the output. Workers are spawned, so a script that calls
        ``generate`` at import time must do so under ``if __name__ == "__main__":``.

    Returns
    -------
    dict
        The summary also written to ``truth/truth.json`` (parameters, windows, file row
        counts, counts, planted rules, noise pairs, dirt).

    Examples
    --------
    >>> from crm_mining.synth import generate
    >>> truth = generate("/tmp/demo", customers=500, seed=7)        # doctest: +SKIP
    >>> truth["counts"]["retail_customers"]                         # doctest: +SKIP
    500
    """
    lines_per_customer = DEFAULT_LINES_PER_CUSTOMER if lines_per_customer is None else float(lines_per_customer)
    _check(customers, lines_per_customer, bank_share, link_share, chunk_customers)
    out = Path(out_dir)
    dirs = _prepare_dirs(out)

    clients = int(round(bank_share * customers))
    linked = int(round(link_share * customers))
    client_of_customer = _links(seed, customers, clients, linked)
    disponent = _disponent_flags(seed, clients)
    district_rows, district_share = bank.district_rows(_rng(seed, _DISTRICT_STREAM))

    retail_starts = list(range(0, customers, chunk_customers))
    tasks = [{"kind": "retail", "seed": seed, "chunk": k, "chunk_count": len(retail_starts),
              "first_customer": start, "customers": min(chunk_customers, customers - start),
              "lines_per_customer": lines_per_customer,
              "linked_client": client_of_customer[start:start + chunk_customers],
              "path": str(dirs["retail"] / f"part-{k:05d}.csv")} for k, start in enumerate(retail_starts)]
    bank_starts = list(range(0, len(disponent), BANK_CHUNK_ACCOUNTS))
    clients_before = np.concatenate([[0], np.cumsum(1 + disponent)])
    tasks += [{"kind": "bank", "seed": seed, "chunk": k, "chunk_count": len(bank_starts),
               "first_account_id": 1 + start, "first_client_id": 1 + int(clients_before[start]),
               "disponent": disponent[start:start + BANK_CHUNK_ACCOUNTS], "district_share": district_share,
               "trans_part": str(dirs["berka"] / f".trans-part-{k:05d}")} for k, start in enumerate(bank_starts)]

    catalogue = build_catalogue(_rng(seed, _CATALOGUE_STREAM))
    counter = ItemsetCounter(catalogue, catalogue.most_popular_noise(NOISE_PAIR_PRODUCTS))
    files: dict[str, int] = {}
    dirt: dict = {}
    counts = {"retail_customers": customers, "retail_lines": 0, "retail_invoices": 0, "clean_lines": 0,
              "clean_baskets": 0, "bank_clients": clients, "bank_accounts": len(disponent),
              "bank_transactions": 0, "linked_customers": linked}
    spend, segments, churners, dormant = [], {}, 0, 0
    customers_csv = dirs["truth"] / "customers.csv"
    clients_csv = dirs["truth"] / "bank_clients.csv"
    table_files = {name: open(dirs["berka"] / f"{name}.asc", "wb") for name in bank.HEADERS if name != "trans"}
    try:
        for name, handle in table_files.items():
            handle.write((bank.HEADERS[name] + bank.EOL).encode())
        table_files["district"].write("".join(district_rows).encode())
        files["berka/district.asc"] = len(district_rows)
        with open(customers_csv, "w", newline="") as customers_out, open(clients_csv, "w", newline="") as clients_out:
            first_retail, first_bank = True, True
            for result in _run_all(tasks, _worker_count(len(tasks), workers)):
                if result["kind"] == "retail":
                    frame = result["customers"]
                    frame.to_csv(customers_out, index=False, header=first_retail)
                    first_retail = False
                    files[f"retail/{Path(result['path']).name}"] = result["rows"]
                    counts["retail_lines"] += result["rows"]
                    counts["retail_invoices"] += result["invoices"]
                    counts["clean_lines"] += result["clean_lines"]
                    counts["clean_baskets"] += result["clean_baskets"]
                    _add_counts(dirt, result["dirt"])
                    part = ItemsetCounter(catalogue, counter.noise_pair_items, result["clean_baskets"],
                                          result["item_counts"], result["itemset_counts"])
                    counter.merge(part)
                    spend.append(frame["clean_spend"].to_numpy())
                    churners += int(frame["is_churner"].sum())
                    for name, size in frame["segment"].value_counts().items():
                        segments[name] = segments.get(name, 0) + int(size)
                else:
                    for name, data in result["tables"].items():
                        table_files[name].write(data)
                        files[f"berka/{name}.asc"] = files.get(f"berka/{name}.asc", 0) + result["rows"][name]
                    counts["bank_transactions"] += result["transactions"]
                    frame = _clients_frame(result["clients"], client_of_customer)
                    frame.to_csv(clients_out, index=False, header=first_bank)
                    first_bank = False
                    dormant += int(frame["is_dormant"].sum())
            if first_bank:
                clients_out.write("client_id,account_id,disp_type,is_dormant,dormant_since,CustomerID\n")
    finally:
        for handle in table_files.values():
            handle.close()
    for name in ("account", "client", "disp", "card", "loan", "order"):
        files.setdefault(f"berka/{name}.asc", 0)
    files["berka/trans.asc"] = _concatenate_trans(dirs["berka"], len(bank_starts))
    files["link/customer_link.csv"] = _write_links(dirs["link"] / "customer_link.csv", client_of_customer)
    files["truth/customers.csv"] = customers
    files["truth/bank_clients.csv"] = clients
    counts.update(churners=churners, dormant_clients=dormant, cards=files["berka/card.asc"],
                  loans=files["berka/loan.asc"], orders=files["berka/order.asc"],
                  dispositions=files["berka/disp.asc"], districts=files["berka/district.asc"])

    truth = {
        "version": TRUTH_VERSION,
        "parameters": {"customers": customers, "seed": seed, "lines_per_customer": lines_per_customer,
                       "bank_share": bank_share, "link_share": link_share, "chunk_customers": chunk_customers},
        "retail_window": {"start": str(RETAIL_START), "end": str(RETAIL_LAST_DAY)},
        "bank_window": {"start": str(bank.BANK_START), "end": str(bank.BANK_END)},
        "files": dict(sorted(files.items())),
        "counts": counts,
        "segments": {s.name: {"customers": segments.get(s.name, 0), "planted_share": s.share,
                              "description": s.description} for s in SEGMENTS},
        "top20_share_of_clean_spend": _top_share(np.concatenate(spend) if spend else np.empty(0)),
        "basket_definition": ("one basket per InvoiceNo over clean lines: the line parses, InvoiceNo has no 'C' "
                              "prefix, Quantity > 0, UnitPrice > 0, CustomerID present, StockCode not in "
                              + ", ".join(NON_PRODUCT_CODES) + "; a basket is the set of its StockCodes"),
        "association_rules": counter.planted_rules(),
        "noise_pairs": counter.noise_pairs(),
        "dirt": dirt,
        "bank_dirt": {"district_unknown_values": 2},
        "bank_dormancy": ("after dormant_since an account has only bank-initiated transactions (k_symbol "
                          "SLUZBY, UROK, SANKC. UROK, UVER); client-initiated activity fades over the "
                          f"{int(bank.DORMANCY_FADE_DAYS)} days before"),
        "churn": ("is_churner: no purchases after churn_date; churn_cause 'lapse' = planted, purchase "
                  "rate fading over the 90 days before; 'dropout' = BG/NBD dropout after the last purchase"),
    }
    (dirs["truth"] / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def _clients_frame(clients: dict, client_of_customer: np.ndarray) -> pd.DataFrame:
    linked = np.nonzero(client_of_customer)[0]
    customer_of_client = pd.Series(FIRST_CUSTOMER_ID + linked, index=client_of_customer[linked])
    dormant_day = clients["dormant_day"]
    return pd.DataFrame({
        "client_id": clients["client_id"],
        "account_id": clients["account_id"],
        "disp_type": clients["type"],
        "is_dormant": dormant_day < bank.BANK_DAYS,
        "dormant_since": _day_iso(dormant_day),
        "CustomerID": customer_of_client.reindex(clients["client_id"]).astype("Int64").reset_index(drop=True),
    })


def _concatenate_trans(berka: Path, parts: int) -> int:
    """trans.asc = header + every chunk's part, in chunk order; returns the data row count."""
    rows = 0
    with open(berka / "trans.asc", "wb") as out:
        out.write((bank.TRANS_HEADER + bank.EOL).encode())
        for k in range(parts):
            part = berka / f".trans-part-{k:05d}"
            with open(part, "rb") as handle:
                while block := handle.read(1 << 24):
                    rows += block.count(b"\n")
                    out.write(block)
            part.unlink()
    return rows


def _write_links(path: Path, client_of_customer: np.ndarray) -> int:
    linked = np.nonzero(client_of_customer)[0]
    pd.DataFrame({"CustomerID": FIRST_CUSTOMER_ID + linked, "client_id": client_of_customer[linked]}).to_csv(
        path, index=False)
    return len(linked)
