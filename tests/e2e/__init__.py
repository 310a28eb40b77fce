"""End-to-end tests: the real node over HTTP on 127.0.0.1."""
