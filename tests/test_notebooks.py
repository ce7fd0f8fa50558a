"""The analyst notebooks run top to bottom against a small lake and draw their plots.

The lake holds the same small inline tables as the report test, written with
:class:`crm_mining.lake.Lake`. Each notebook runs in a fresh python3 kernel of this interpreter
(nbclient), with ``CRM_LAKE_ROOT`` pointing at the test lake. The Spark SQL notebook starts its
own small local session in the kernel process; the pandas notebook needs no Spark at all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from crm_mining.lake import Lake
from test_report import AS_OF, RUN, write_tables

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SPARK_SQL = NOTEBOOKS / "01_gold_tables_spark_sql.ipynb"
PANDAS = NOTEBOOKS / "02_gold_tables_pandas_deltalake.ipynb"


@pytest.fixture(scope="module")
def notebook_lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook_lake") / "lake"
    database = "crm_notebook_test"
    write_tables(spark, Lake(spark, root=str(root), database=database))
    yield root
    spark.sql(f"DROP DATABASE IF EXISTS {database} CASCADE")


def execute(path: Path, lake_root: Path, workdir: Path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CRM_LAKE_ROOT", str(lake_root))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    notebook = nbformat.read(path, as_version=4)
    # "python3" is the native kernel: jupyter_client starts it with this interpreter.
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


def outputs(notebook, mime: str) -> list[str]:
    found = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if mime in data:
                found.append(data[mime])
    return found


def text_outputs(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebooks_are_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    for path in (SPARK_SQL, PANDAS):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path.name
        assert 'os.environ.get("CRM_LAKE_ROOT", ' in "".join(c.source for c in notebook.cells)


def test_pandas_notebook_reads_the_lake_without_spark(notebook_lake, tmp_path, monkeypatch):
    notebook = execute(PANDAS, notebook_lake, tmp_path, monkeypatch)
    assert len(outputs(notebook, "image/png")) >= 4
    text = text_outputs(notebook)
    assert f"gold_customer_value: 60 rows as of {AS_OF.isoformat()}, run {RUN}" in text
    assert "pyspark" not in "".join(c.source for c in notebook.cells)
    assert "big spenders" in text and "tea cup" in text


def test_spark_sql_notebook_reads_tables_by_name(notebook_lake, tmp_path, monkeypatch):
    notebook = execute(SPARK_SQL, notebook_lake, tmp_path, monkeypatch)
    assert len(outputs(notebook, "image/png")) >= 5
    text = text_outputs(notebook)
    assert "gold_customer_value" in text and "gold_churn_scores" in text  # registered tables
    assert "big spenders" in text and "tea cup" in text
    assert "FROM crm.gold_customer_value" in "".join(c.source for c in notebook.cells)
