"""Turning a user's state into recommendations: the Reasoner interface, the behavioural route
(co-visitation + popularity) and, later, the intent route (planner, experts, arbiter)."""
