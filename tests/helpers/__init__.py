"""Test-only helpers: fake native dataset trees, the transformers reference model, architecture tweaks."""
