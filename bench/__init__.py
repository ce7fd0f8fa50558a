"""Benchmarks of crm-mining and its single-machine peers (`make bench`)."""
