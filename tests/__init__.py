"""The test suite, and the fixtures that the tests and the benchmarks share (synthetic jobs, replay)."""
