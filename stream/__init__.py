"""The streaming runtime: the Faust worker (batches, dead letters, failures, recovery), producers,
the Redis result sink and reader, the feedback log, the intent route. The records it moves are in
contracts/; dataset replay is an offline tool (offline/)."""
