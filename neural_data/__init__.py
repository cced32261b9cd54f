"""Brain datasets: one schema, loaders for real formats, a registry, a synthetic generator."""
