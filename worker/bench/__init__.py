"""The benchmark: a real stack under load, its ceilings, and the page it writes."""
