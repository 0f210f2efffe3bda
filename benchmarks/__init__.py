"""Benchmarks: aioreg against CNCF Distribution on loopback (``python -m benchmarks``)."""
