"""Test helpers by concern; test files import helpers from here (or tests.conftest), never from one another."""
