"""Turning a user's state into recommendations: the Reasoner interface, the behavioural route
(co-visitation + popularity), the intent route (planner, experts, arbiter) and the model registry."""
