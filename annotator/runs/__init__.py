"""How a run is carried out: one file, a directory of resumable parts, shards, worker processes,
Ray."""
