"""blockwatch's probes: the vocabulary, every probe, the failure taxonomy, verdict rules and the
built-in service catalogue. This package imports nothing else of blockwatch's."""
