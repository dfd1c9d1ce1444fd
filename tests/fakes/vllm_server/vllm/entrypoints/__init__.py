"""A fake of vLLM, found first on PYTHONPATH by the tests that start it."""
