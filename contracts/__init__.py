"""The ground layer: what every other package agrees on, importing nothing of the project.

`settings` (every setting, documented field by field), `events` (the event record and its
bounds), `feedback` (impressions and actions), `recs` (the recommendation record and the fallback
reasons), `keys` (Redis key names), `topics` (Kafka topic names), `errors` (the error root).
"""
