"""Prefect flows and deployments, and the `neuralign` command line.

Importing this package does not import Prefect; only `flows.flows` and `flows.serve` do.
"""
