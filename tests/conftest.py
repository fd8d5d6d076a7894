"""The fixtures live in tests/support with the factories and waits, so that no test module imports another."""

pytest_plugins = ["tests.support.fixtures"]
