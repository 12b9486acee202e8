"""Shared pytest set-up: the `site` marker (browser tests of the built book, tests/test_site.py)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "site: browser tests of the built website (run after `make book`)")
