"""Events on Kafka: the event contract, producers, dataset replay, the Faust worker, dead letters
and the Redis result sink."""
