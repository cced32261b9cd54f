"""Activations -> regression -> scores -> reports. Pure library code: no Prefect import."""
