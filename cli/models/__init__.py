"""The models the `yaie` commands serve without a --model of their own: the built-in SmolLM2
(fetched, converted and cached), and the tiny random-weight models tests and benchmarks build."""
