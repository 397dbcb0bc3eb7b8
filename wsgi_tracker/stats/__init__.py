"""Statistics for the whole tracker: collection, /stats and /metrics, and the /stats.html page."""
