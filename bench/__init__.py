"""``bench``: a latency profiler for OpenAI-compatible LLM servers.

Layer: a pure HTTP client. Imports nothing of ours except its own package, so it
can profile any server (Bastion, vLLM, TGI, a hosted API).
"""
