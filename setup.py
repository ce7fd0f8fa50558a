"""Packaging for crm-mining: the library, its console script and the default configuration.

The committed ``conf/`` directory is copied into the package at build time (as
``crm_mining/_conf``) so that an installed wheel finds its defaults without a checkout.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithConf(build_py):
    """Ship ``conf/`` inside the package so a wheel is self-contained."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "crm_mining" / "_conf"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(HERE / "conf", target)


INSTALL_REQUIRES = [
    "pyspark==4.2.0",
    # Must match a JAR on Maven Central: delta-spark_4.2_2.13 exists in 4.4.0, not 4.4.1.
    "delta-spark==4.4.0",
    "mlflow>=3.0,<4",
    "pandas>=2.2,<3",
    "numpy>=1.26,<3",
    "pyarrow>=15,<27",
    "pyyaml>=6,<7",
    "scipy>=1.11,<2",
    "matplotlib>=3.8,<4",
    "psutil>=5.9,<8",
]

TEST_REQUIRES = [
    "pytest>=8,<10",
    "mlxtend>=0.23,<0.26",
    "scikit-learn>=1.4,<2",
    "lifetimes==0.11.3",
    "nbclient>=0.10,<0.12",
    "nbformat>=5.9,<6",
    "ipykernel>=6.29,<8",
    "deltalake>=0.20,<2",
]

BENCH_REQUIRES = ["duckdb>=1.0,<3", "polars>=1.0,<3"]

setup(
    name="crm-mining",
    version="0.1.0",
    description="Batch data mining for analytical CRM on Apache Spark and Delta Lake",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["crm_mining", "crm_mining.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "bench": TEST_REQUIRES + BENCH_REQUIRES},
    entry_points={"console_scripts": ["crm-mining=crm_mining.cli:main"]},
    cmdclass={"build_py": BuildWithConf},
)
