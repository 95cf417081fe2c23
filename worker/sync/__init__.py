"""How a change flows: ingest and merge, echoes and deletes, push, fan-out, duplicates."""
