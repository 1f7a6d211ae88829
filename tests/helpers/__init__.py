"""Test helpers by concern (torch references, assertions, evaluation files, method inputs, training runs, a GCS
server, a TFDS copy); test files import them from here, never from one another, and tests/conftest.py holds only
pytest's hooks and fixtures."""
