"""Everything oppsync keeps in Redis: key names, records, locks, history, dead letters."""
