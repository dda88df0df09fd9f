"""Benchmarks behind ``ntshim bench``: every subject beside a floor measured in the same run."""
