"""The worker side: the loop, claims, the heartbeat and step reporting."""
