"""crm-mining: batch data mining for analytical CRM on Apache Spark and Delta Lake.

The library: every step is a function from DataFrames to DataFrames; I/O happens at the
edges (``lake``, ``sources``, ``jobs/``). See ``crm_mining.pipeline`` for the step order.
"""
__version__ = "0.1.0"
