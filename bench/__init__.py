"""Benchmarks: ingestflow against LangChain and LlamaIndex, and its own stages.

``python -m bench --help`` lists the commands. BENCHMARKS.md holds the latest results.
"""
