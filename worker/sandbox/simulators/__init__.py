"""The five simulated vendors: real HTTP servers that enforce what the real APIs enforce."""
