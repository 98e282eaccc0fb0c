"""Pure array and graph code: contact statistics, agglomeration, scoring functions, union-find,
metrics. No daisy, no database."""
