"""Shared pytest set-up: the `site` marker (browser tests of the built book, tests/test_site.py) and
the `wheel` marker (tests/test_wheel.py: a fresh virtual environment, minutes)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "site: browser tests of the built website (run after `make book`)")
    config.addinivalue_line("markers", "wheel: the built wheel installed in a fresh virtual environment (slow)")
