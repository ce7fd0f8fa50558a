"""Shared test fixtures: one Spark session for the whole run, temporary lakes and configs.

Spark start-up costs 10–20 s, so every test shares one ``local[2]`` session with few shuffle
partitions and no UI. Tests on the real public datasets skip when ``../shared/data`` is absent.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CRM_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("CRM_PII_KEY", "test-key-for-the-test-suite")
os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)


_STARTED = time.monotonic()
#: Seconds after which the remaining slow tests are skipped (0: no limit). CI sets it so a
#: run always ends well inside its time limit, whatever the machine's speed.
TEST_BUDGET_S = float(os.environ.get("CRM_TEST_BUDGET_S") or 0)
#: Seconds after which every remaining test is skipped: the last resort against a time limit.
TEST_HARD_BUDGET_S = float(os.environ.get("CRM_TEST_HARD_BUDGET_S") or 0)


#: How Spark runs the operators of a query on the small tables of most tests: interpreted, as
#: Spark's own test suites also run its expressions. Compiled code (Spark's defaults: whole-stage
#: code for the operators, ``FALLBACK`` for the projections, orderings and encoders outside it,
#: Delta's log replays among them) is generated and compiled anew for every query, and on a few
#: hundred rows that costs more than it saves. Measured on 2 cores, for tests/test_value.py,
#: test_customer360.py and test_report.py: 191.5 s compiled, 167.0 s with the projections
#: interpreted; on a faster day 120.7 s with the projections interpreted, 112.7 s with the
#: operators interpreted too. The end-to-end demo pipeline: 280 s compiled, 222 s with the
#: projections interpreted. Tests on the real datasets (marked ``real_data``) run compiled: UCI
#: ingest + refine took 158 s with the projections interpreted against 87 s. Not a default of
#: crm-mining itself: at 10M lines its refine step took 885 s with them against 450 s.
CODEGEN_MODE = "spark.sql.codegen.factoryMode"
WHOLE_STAGE = "spark.sql.codegen.wholeStage"
SMALL_DATA_CONF = {CODEGEN_MODE: "NO_CODEGEN", WHOLE_STAGE: "false"}
#: Spark's defaults for the same settings, in force during a ``real_data`` test.
COMPILED_CONF = {CODEGEN_MODE: "FALLBACK", WHOLE_STAGE: "true"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (real data or end-to-end); runs in make test too")
    config.addinivalue_line("markers", "real_data: works on a public dataset of ../shared/data; Spark "
                                       "compiles its code meanwhile (see SMALL_DATA_CONF)")


def pytest_collection_modifyitems(config, items):
    """Fast tests first, slow ones after, the end-to-end suite (the longest) last: a budget cut
    then only ever drops slow tests."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is not None,
                                 item.module.__name__.endswith("test_end_to_end")))


def pytest_runtest_setup(item):
    spent = time.monotonic() - _STARTED
    if TEST_HARD_BUDGET_S and spent > TEST_HARD_BUDGET_S:
        pytest.skip(f"hard test time budget spent ({spent:.0f} s > CRM_TEST_HARD_BUDGET_S={TEST_HARD_BUDGET_S:.0f})")
    if TEST_BUDGET_S and item.get_closest_marker("slow") and spent > TEST_BUDGET_S:
        pytest.skip(f"test time budget spent ({spent:.0f} s > CRM_TEST_BUDGET_S={TEST_BUDGET_S:.0f}); "
                    f"run the slow tests alone with: pytest -m slow")


@pytest.fixture(scope="session")
def spark():
    from crm_mining.session import get_spark

    session = get_spark({"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "4g",
                         "ui": False, "log_level": "ERROR", "conf": SMALL_DATA_CONF})
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _compiled_code_for_real_data(request):
    """Spark's own compiled code for the duration of a ``real_data`` test."""
    if request.node.get_closest_marker("real_data") is None:
        yield
        return
    session = request.getfixturevalue("spark")
    for key, value in COMPILED_CONF.items():
        session.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in SMALL_DATA_CONF.items():
            session.conf.set(key, value)


@pytest.fixture
def lake(spark, tmp_path):
    """An empty lake in a temporary directory, with its own catalog database."""
    from crm_mining.lake import Lake

    database = f"crm_test_{abs(hash(str(tmp_path))) % 10**8}"
    yield Lake(spark, root=str(tmp_path / "lake"), database=database)
    spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")


@pytest.fixture
def make_config(tmp_path):
    """Build a Config with a temporary workdir, lake and MLflow store, plus overrides."""
    from crm_mining.config import load_config

    def build(*overrides: str, config_files=()):
        base = [f"run.workdir={tmp_path}", f"lake.root={tmp_path / 'lake'}",
                f"report.out={tmp_path / 'reports'}", f"demo.out={tmp_path / 'demo_data'}"]
        return load_config(config_files=config_files, overrides=[*base, *overrides])

    return build


def shared_path(*parts: str) -> Path:
    """A path under the shared public datasets, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"public dataset not available: {path} (../shared/data is not beside the checkout)")
    return path
