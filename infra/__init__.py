"""Local services (Kafka, Redis, Feast) for machines without Docker, plus compose and broker config."""
