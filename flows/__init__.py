"""Prefect flows and deployments, and the `neuralign` command line.

Importing this package does not import Prefect; only `flows.workflows`, `flows.tasks` and `flows.serve` do
(and `flows.artifacts.publish`, when it runs).
"""
