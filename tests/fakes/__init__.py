"""Fakes for tests: real servers on 127.0.0.1 with scripted faults."""

from tests.fakes.upstream import FakeUpstream, RecordedRequest, Reply, closed_port_url

__all__ = ["FakeUpstream", "RecordedRequest", "Reply", "closed_port_url"]
